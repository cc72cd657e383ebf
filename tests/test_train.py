"""The trainer: reproducible, exactly resumable, loud on divergence, files it promises."""

from __future__ import annotations

import json
import math

import pytest
import torch

from study_factory import same_weights
from study_factory import small_run_config as _config
from vae_study import metrics as M
from vae_study.config.run import RunConfig, replace_keys
from vae_study.core import checkpoint as ckpt
from vae_study.core.data import load_datasets
from vae_study.core.evaluate import elbo_terms
from vae_study.core.optimizer import make_optimizer, scheduled_lr
from vae_study.core.splits import Datasets, Split
from vae_study.core.train import fit
from vae_study.errors import CheckpointError, TrainingDiverged


def test_fit_learns_and_writes_its_files(mnist_root, tmp_path):
    out = tmp_path / "run"
    res = fit(_config(mnist_root, **{"train.epochs": 4}), out_dir=out)
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h[M.EPOCH] for h in hist] == [1, 2, 3, 4]
    for key in (M.TRAIN_LOSS, M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, M.EPOCH_SECONDS):
        assert all(math.isfinite(h[key]) for h in hist)
    assert hist[-1][M.VAL_NEG_ELBO] < hist[0][M.VAL_NEG_ELBO] - 5  # it learns
    for h in hist:
        assert h[M.VAL_NEG_ELBO] == pytest.approx(h[M.VAL_RATE] + h[M.VAL_DISTORTION])
    final = json.loads((out / "final.json").read_text())
    # Grey-level Bernoulli: the bound is a cross-entropy, named so, never an NLL.
    assert M.TEST_CE_BOUND in final and M.VAL_CE_BOUND in final
    assert M.TEST_NLL not in final and M.VAL_NLL not in final and M.TEST_BPD not in final
    assert final[M.EPOCH] == 4
    # pytest.approx compares flat mappings only: the per-dimension KL list on its own.
    assert final.pop(M.TEST_KL_PER_DIM) == pytest.approx(res.final[M.TEST_KL_PER_DIM])
    assert len(res.final[M.TEST_KL_PER_DIM]) == 4  # model.latent_dim
    assert final == pytest.approx(
        {k: v for k, v in {**res.final, M.EPOCH: 4}.items() if k != M.TEST_KL_PER_DIM}
    )
    assert (out / "checkpoint" / "state.pt").is_file()
    assert (out / "checkpoint" / "config.yaml").is_file() and (out / "config.yaml").is_file()


def test_same_seed_same_numbers_other_seed_other_numbers(mnist_root):
    a = fit(_config(mnist_root))
    b = fit(_config(mnist_root))
    c = fit(_config(mnist_root, **{"train.seed": 1}))
    assert a.history[-1][M.TRAIN_LOSS] == b.history[-1][M.TRAIN_LOSS]
    assert a.final[M.TEST_CE_BOUND] == b.final[M.TEST_CE_BOUND]
    assert same_weights(a.model, b.model)
    assert a.history[-1][M.TRAIN_LOSS] != c.history[-1][M.TRAIN_LOSS]


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_resume_continues_exactly_where_it_stopped(mnist_root, tmp_path, binarize):
    keys = {"train.epochs": 3, "data.binarize": binarize, "train.k": 2}
    straight = fit(_config(mnist_root, **keys), out_dir=tmp_path / "a")
    fit(
        _config(mnist_root, **{**keys, "train.epochs": 1}),
        out_dir=tmp_path / "b",
        final_eval=False,
    )
    resumed = fit(_config(mnist_root, **keys), out_dir=tmp_path / "b")
    assert same_weights(straight.model, resumed.model)

    def strip(hist):
        return [{k: v for k, v in h.items() if k != M.EPOCH_SECONDS} for h in hist]

    assert strip(straight.history) == strip(resumed.history)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)[M.EPOCH] for x in lines] == [1, 2, 3]


def test_resume_from_an_explicit_checkpoint_folder(mnist_root, tmp_path):
    fit(
        _config(mnist_root, **{"train.epochs": 1}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    saved = ckpt.load(tmp_path / "a" / "checkpoint")
    assert saved.epoch == 1 and saved.config["model"]["latent_dim"] == 4
    res = fit(_config(mnist_root), resume_from=tmp_path / "a" / "checkpoint")
    assert [h[M.EPOCH] for h in res.history] == [1, 2]


def test_resume_with_another_config_is_refused(mnist_root, tmp_path):
    fit(
        _config(mnist_root, **{"train.epochs": 1}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    with pytest.raises(CheckpointError, match=r"train.beta: 1.0 -> 2.0.*--fresh"):
        fit(_config(mnist_root, **{"train.beta": 2.0}), out_dir=tmp_path / "a")


def test_corrupt_checkpoint_is_a_clear_error_and_is_not_overwritten(mnist_root, tmp_path):
    fit(
        _config(mnist_root, **{"train.epochs": 1}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    state = tmp_path / "a" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        fit(_config(mnist_root), out_dir=tmp_path / "a")
    assert state.stat().st_size == 1000


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "state.pt").write_bytes(b"")
    torch.save({"format": 1, "payload": Evil()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError):
        ckpt.load(tmp_path)


def test_nan_loss_stops_with_training_diverged_naming_epoch_and_batch(mnist_root, tmp_path):
    cfg = _config(mnist_root, **{"train.epochs": 2})
    data = load_datasets(cfg.data)
    x = data.train.x.clone()
    x[70] = float("nan")  # one poisoned example: whichever of the 8 batches draws it
    poisoned = Datasets(Split(x, None), data.val, data.test)
    with pytest.raises(TrainingDiverged) as err:
        fit(cfg, data=poisoned, out_dir=tmp_path / "nan")
    assert err.value.epoch == 1 and 1 <= err.value.batch <= 8
    assert "epoch 1" in str(err.value) and f"batch {err.value.batch}" in str(err.value)
    assert not (tmp_path / "nan" / "checkpoint").exists()  # nothing trained on NaN is kept


def test_huge_learning_rate_diverges_loudly_rather_than_silently(mnist_root):
    cfg = _config(mnist_root, **{"train.lr": 1e8, "train.epochs": 3, "model.activation": "elu"})
    with pytest.raises(TrainingDiverged):
        fit(cfg)


def test_on_epoch_hook_sees_each_epoch_and_its_checkpoint(mnist_root, tmp_path):
    seen = []
    fit(
        _config(mnist_root),
        out_dir=tmp_path / "r",
        on_epoch=lambda row, folder: seen.append((row[M.EPOCH], ckpt.load(folder).epoch)),
    )
    assert seen == [(1, 1), (2, 2)]


@pytest.mark.parametrize(
    "keys",
    [
        {"model.arch": "conv", "model.hidden": [64]},
        {"train.objective": "iwae", "train.k": 4, "train.beta": 0.5},
        {"model.likelihood": "gaussian", "model.learn_std": True},
        {"model.hidden": [32, 16], "model.activation": "tanh", "data.binarize": "static"},
        {"model.arch": "conv", "model.hidden": [64], "train.precision": "bfloat16"},
        {
            "model.likelihood": "gaussian",
            "train.objective": "iwae",
            "train.k": 3,
            "train.precision": "bfloat16",
        },
    ],
)
def test_every_model_and_objective_trains(mnist_root, keys):
    cfg = _config(mnist_root, **{"train.epochs": 1, **keys})
    res = fit(cfg)
    assert math.isfinite(res.history[-1][M.VAL_NEG_ELBO])
    assert math.isfinite(res.final[M.bound_key("test", cfg.quantity)])
    assert math.isfinite(res.final[M.bound_key("val", cfg.quantity)])


def test_bfloat16_training_learns_and_is_evaluated_in_float32(mnist_root):
    cfg = _config(mnist_root, **{"train.epochs": 3, "train.precision": "bfloat16"})
    res = fit(cfg)
    f32 = fit(_config(mnist_root, **{"train.epochs": 3}))
    assert res.history[-1][M.VAL_NEG_ELBO] < res.history[0][M.VAL_NEG_ELBO] - 5
    # Mixed precision trains a slightly different model, about as good.
    assert res.history[-1][M.TRAIN_LOSS] != f32.history[-1][M.TRAIN_LOSS]
    assert res.final[M.TEST_NEG_ELBO] == pytest.approx(f32.final[M.TEST_NEG_ELBO], rel=0.05)
    # The test numbers are float32 arithmetic on the trained weights, whatever the training.
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    data = load_datasets(cfg.data)
    again = elbo_terms(res.model, data.test.x, generator=torch.Generator().manual_seed(0))
    assert res.final[M.TEST_RATE] == pytest.approx(again["rate"], rel=1e-5)


def test_adam_uses_the_fused_kernel_on_cpu_and_resumes_with_it(mnist_root, tmp_path):
    res = fit(
        _config(mnist_root, **{"train.epochs": 1}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    assert make_optimizer(res.model, RunConfig().train).param_groups[0]["fused"] is True
    saved = ckpt.load(tmp_path / "a" / "checkpoint").optimizer
    assert saved["param_groups"][0]["fused"] is True and len(saved["state"]) > 0


def test_resuming_a_finished_run_into_a_new_folder_reports_an_existing_checkpoint(
    mnist_root, tmp_path
):
    fit(_config(mnist_root), out_dir=tmp_path / "a", final_eval=False)
    seen = []

    def hook(row, folder):
        seen.append((row[M.EPOCH], ckpt.load(folder).epoch, M.TEST_CE_BOUND in row))

    res = fit(
        _config(mnist_root),
        out_dir=tmp_path / "b",
        resume_from=tmp_path / "a" / "checkpoint",
        on_epoch=hook,
    )
    assert seen == [(2, 2, True)]  # no epoch left: one report, test metrics, a checkpoint
    assert (tmp_path / "b" / "checkpoint" / "state.pt").is_file()
    assert math.isfinite(res.final[M.TEST_CE_BOUND])


def test_a_finished_run_resumed_reuses_its_test_metrics_unless_eval_changed(
    mnist_root, tmp_path, monkeypatch
):
    first = fit(_config(mnist_root), out_dir=tmp_path / "a")
    import vae_study.core.train as T

    calls = []
    real = T.final_metrics
    monkeypatch.setattr(T, "final_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = fit(
        _config(mnist_root),
        out_dir=tmp_path / "b",
        resume_from=tmp_path / "a" / "checkpoint",
    )
    assert calls == [] and again.final[M.TEST_CE_BOUND] == first.final[M.TEST_CE_BOUND]
    other = fit(
        _config(mnist_root, **{"eval.k": 16}),
        out_dir=tmp_path / "c",
        resume_from=tmp_path / "a" / "checkpoint",
    )
    assert calls == [1] and math.isfinite(other.final[M.TEST_CE_BOUND])


def test_the_burda_schedule_is_the_papers_eight_stages_scaled_to_the_run():
    """Burda et al. 2015: 3**i epochs at 1e-3 * 10**(-i/7), i = 0..7 (3280 epochs)."""
    cfg = replace_keys(RunConfig(), {"train.lr": 1e-3, "train.lr_schedule": "burda"}).train
    paper = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    assert len(paper) == 3280
    assert [scheduled_lr(cfg, u, 3280) for u in range(3280)] == pytest.approx(paper, rel=1e-12)
    # Scaled: 10 updates for each of the paper's epochs, every stage 10 times as long.
    scaled = [scheduled_lr(cfg, u, 32800) for u in range(32800)]
    assert scaled == pytest.approx([lr for lr in paper for _ in range(10)], rel=1e-12)
    # A short run still passes through all 8 stages, in order, ending at lr / 10.
    short = [scheduled_lr(cfg, u, 6000) for u in range(6000)]
    assert sorted(set(short), reverse=True) == pytest.approx(sorted(set(paper), reverse=True))
    assert short == sorted(short, reverse=True) and short[-1] == pytest.approx(1e-4)
    constant = replace_keys(RunConfig(), {"train.lr": 3e-4}).train
    assert {scheduled_lr(constant, u, 100) for u in range(100)} == {3e-4}


def test_adam_settings_and_the_schedule_reach_torch_and_resume_exactly(mnist_root, tmp_path):
    keys = {
        "train.epochs": 3,
        "train.lr_schedule": "burda",
        "train.adam_betas": [0.99, 0.999],
        "train.adam_eps": 1e-4,
    }
    straight = fit(_config(mnist_root, **keys), out_dir=tmp_path / "a", final_eval=False)
    group = ckpt.load(tmp_path / "a" / "checkpoint").optimizer["param_groups"][0]
    assert tuple(group["betas"]) == (0.99, 0.999) and group["eps"] == 1e-4
    assert group["lr"] == pytest.approx(1e-4)  # the last update is in the last stage

    def stop(row: dict, _folder) -> None:
        if row[M.EPOCH] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_config(mnist_root, **keys), out_dir=tmp_path / "b", final_eval=False, on_epoch=stop)
    # The rates of the epochs done depend on train.epochs: a longer run is another run.
    with pytest.raises(CheckpointError, match="train.epochs: 3 -> 4"):
        fit(_config(mnist_root, **{**keys, "train.epochs": 4}), out_dir=tmp_path / "b")
    resumed = fit(_config(mnist_root, **keys), out_dir=tmp_path / "b", final_eval=False)
    assert same_weights(straight.model, resumed.model)
    # The schedule and the settings change the run: a check that the comparison can fail.
    plain = fit(_config(mnist_root, **{"train.epochs": 3}), final_eval=False)
    assert not same_weights(straight.model, plain.model)
