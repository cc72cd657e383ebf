"""Fused members: a pack's member is the run ``fit`` would make of its configuration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from study_factory import small_run_config
from vae_study import metrics as M
from vae_study.config.run import RunConfig, replace_keys
from vae_study.core import checkpoint as ckpt
from vae_study.core.fused import check_packable, fit_pack, fusion_mode
from vae_study.core.optimizer import make_optimizer
from vae_study.core.train import FitResult, fit, make_model
from vae_study.errors import ConfigError, TrainingDiverged

RTOL = 1e-5  # a batched matmul is not bit-for-bit the single one; a few steps stay this close


def _config(root, **keys) -> RunConfig:
    return small_run_config(root, **{"data.binarize": "dynamic", **keys})


def _members(root, specs, **shared) -> list[RunConfig]:
    """Configurations differing in (seed, beta, lr)."""
    return [
        _config(root, **{"train.seed": s, "train.beta": b, "train.lr": lr, **shared})
        for s, b, lr in specs
    ]


SPECS = [(0, 1.0, 1e-3), (1, 0.5, 3e-3), (2, 2.0, 1e-3)]
STATIC = (M.EPOCH_SECONDS, M.TOTAL_SECONDS)  # wall-clock times differ, everything else not


def _assert_same_run(
    a: FitResult, b: FitResult, rtol: float = RTOL, weights_within: float | None = None
) -> None:
    """The same run to ``rtol`` in every number; the weights to 1e-4 relative and 1e-5
    absolute, or to ``weights_within`` absolute when that is given. (Rounding of a batched
    matmul moves a few of 25k weights 4e-6 after 16 Adam steps on an AVX-512 Xeon; one
    wrong step moves every weight by about lr, 1e-3.)"""
    assert len(a.history) == len(b.history)
    for row_a, row_b in zip(a.history, b.history, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key not in STATIC:
                assert row_b[key] == pytest.approx(row_a[key], rel=rtol), key
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert sd_a[key].shape == sd_b[key].shape
        if weights_within is None:
            torch.testing.assert_close(sd_b[key], sd_a[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            torch.testing.assert_close(sd_b[key], sd_a[key], rtol=0, atol=weights_within, msg=key)
    assert a.final.keys() == b.final.keys()
    for key, value in a.final.items():
        if key not in STATIC and isinstance(value, float):
            assert b.final[key] == pytest.approx(value, rel=1e-4), key


@pytest.mark.parametrize(
    "shared",
    [
        {},  # grey levels binarized afresh per batch, ELBO
        {"train.objective": "iwae", "train.k": 3, "data.binarize": "none"},
        {"model.likelihood": "gaussian", "model.learn_std": True, "data.binarize": "none"},
        {"model.hidden": [32, 16], "model.activation": "tanh", "train.k": 2},
        {"train.precision": "bfloat16"},  # autocast: the batched matmuls in bfloat16 too
        # Burda et al.'s optimiser: each member's own lr, staged per update
        {"train.lr_schedule": "burda", "train.adam_betas": [0.99, 0.999], "train.adam_eps": 1e-4},
    ],
    ids=["dynamic-elbo", "iwae-k3", "gaussian-learned-std", "two-layers-k2", "bfloat16", "burda"],
)
def test_members_equal_their_separate_fits(mnist_root, shared):
    configs = _members(mnist_root, SPECS, **shared)
    if "model.likelihood" in shared:  # a per-member initial std is a member key too
        configs[1] = replace_keys(configs[1], {"model.gaussian_std": 0.2})
    packed = fit_pack(configs)
    for config, member in zip(configs, packed, strict=True):
        assert isinstance(member, FitResult)
        _assert_same_run(fit(config), member)
    # The members are three runs, not one: a check that the comparison can fail.
    assert packed[0].history[-1][M.TRAIN_LOSS] != packed[1].history[-1][M.TRAIN_LOSS]


def test_members_equal_their_separate_fits_step_by_step_for_50_steps(mnist_root):
    """One batch an epoch (250 training images, batch 256): each history row is one step."""
    configs = _members(mnist_root, SPECS[1:], **{"train.batch_size": 256, "train.epochs": 50})
    packed = fit_pack(configs, final_eval=False)
    keys = (M.TRAIN_LOSS, M.TRAIN_RATE, M.TRAIN_DISTORTION)
    for config, member in zip(configs, packed, strict=True):
        single = fit(config, final_eval=False)
        steps = [h[key] for h in single.history for key in keys]
        assert len(steps) == 50 * len(keys)
        assert [h[key] for h in member.history for key in keys] == pytest.approx(steps, rel=RTOL)


def test_a_member_does_not_depend_on_its_pack_mates_or_m(mnist_root):
    x = _config(mnist_root, **{"train.seed": 5, "train.beta": 0.7, "train.lr": 2e-3})
    alone = fit_pack([x], final_eval=False)[0]
    mates_a = fit_pack([x, *_members(mnist_root, SPECS[:1])], final_eval=False)[0]
    mates_b = fit_pack([*_members(mnist_root, SPECS), x], final_eval=False)[-1]
    for other in (mates_a, mates_b):
        _assert_same_run(alone, other, rtol=1e-6)
    _assert_same_run(fit(x, final_eval=False), alone)


def test_a_diverged_member_is_masked_and_the_others_go_on(mnist_root, tmp_path):
    good = _members(mnist_root, SPECS[:2])
    bad = _config(mnist_root, **{"train.seed": 3, "train.lr": 1e7})
    with pytest.raises(TrainingDiverged) as alone:
        fit(bad)
    outs = [tmp_path / n for n in ("a", "bad", "b")]
    seen: list[int] = []
    packed = fit_pack(
        [good[0], bad, good[1]], out_dirs=outs, on_epoch=lambda j, row, folder: seen.append(j)
    )
    without = fit_pack(good)
    failed = packed[1]
    assert isinstance(failed, TrainingDiverged)
    # Where and how it diverged is what fit says of the same configuration alone.
    assert (failed.epoch, failed.batch) == (alone.value.epoch, alone.value.batch)
    assert not math.isfinite(failed.value)
    assert not ckpt.exists(outs[1] / "checkpoint")  # it never had a good epoch
    assert (outs[1] / "metrics.jsonl").read_text() == ""
    assert 1 not in seen and seen.count(0) == seen.count(2) == 2
    # Its pack-mates' numbers are those of the pack without it.
    _assert_same_run(without[0], packed[0], rtol=1e-6)
    _assert_same_run(without[1], packed[2], rtol=1e-6)


def test_a_diverged_member_keeps_its_last_good_checkpoint(mnist_root, tmp_path):
    """A member that diverges in epoch 2 (its lr raised by hand after epoch 1)."""
    configs = _members(mnist_root, SPECS[:2], **{"train.epochs": 1})
    outs = [tmp_path / "a", tmp_path / "b"]
    fit_pack(configs, out_dirs=outs, final_eval=False)
    saved = ckpt.load(outs[1] / "checkpoint")
    saved.optimizer["param_groups"][0]["lr"] = 1e7  # the optimizer's lr comes from its state
    ckpt.save(outs[1] / "checkpoint", saved)
    two = [replace_keys(c, {"train.epochs": 2}) for c in configs]
    packed = fit_pack(two, out_dirs=outs)
    assert isinstance(packed[0], FitResult) and isinstance(packed[1], TrainingDiverged)
    assert packed[1].epoch == 2
    kept = ckpt.load(outs[1] / "checkpoint")
    assert kept.epoch == 1
    for key, value in saved.model.items():
        assert torch.equal(kept.model[key], value)
    lines = (outs[1] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)[M.EPOCH] for line in lines] == [1]
    assert not (outs[1] / "final.json").exists()


def test_an_interrupted_pack_resumes_every_member_exactly(mnist_root, tmp_path):
    configs = _members(mnist_root, SPECS, **{"train.epochs": 3})
    straight = fit_pack(configs, out_dirs=[tmp_path / f"s{j}" for j in range(3)])
    outs = [tmp_path / f"r{j}" for j in range(3)]

    def stop(j: int, row: dict, folder) -> None:
        if row[M.EPOCH] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_pack(configs, out_dirs=outs, on_epoch=stop)
    assert all(ckpt.load(o / "checkpoint").epoch == 1 for o in outs)
    resumed = fit_pack(configs, out_dirs=outs)
    for a, b, out in zip(straight, resumed, outs, strict=True):
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
            assert torch.equal(x, y)
        strip = [{k: v for k, v in h.items() if k not in STATIC} for h in a.history]
        assert strip == [{k: v for k, v in h.items() if k not in STATIC} for h in b.history]
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)[M.EPOCH] for line in lines] == [1, 2, 3]


def test_members_resumed_from_different_epochs_train_together(mnist_root, tmp_path):
    """A kill between two members' checkpoints leaves them at different epochs."""
    configs = _members(mnist_root, SPECS[:2], **{"train.epochs": 3})
    outs = [tmp_path / "a", tmp_path / "b"]
    fit(replace_keys(configs[0], {"train.epochs": 2}), out_dir=outs[0], final_eval=False)
    epochs_seen: dict[int, list[int]] = {0: [], 1: []}
    packed = fit_pack(
        configs, out_dirs=outs, on_epoch=lambda j, row, folder: epochs_seen[j].append(row[M.EPOCH])
    )
    assert epochs_seen == {0: [3], 1: [1, 2, 3]}
    for config, member in zip(configs, packed, strict=True):
        _assert_same_run(fit(config), member)


def test_a_member_folder_is_a_fit_folder_that_fit_continues(mnist_root, tmp_path):
    configs = _members(mnist_root, SPECS[:2], **{"train.epochs": 1})
    outs = [tmp_path / "a", tmp_path / "b"]
    fit_pack(configs, out_dirs=outs)
    single = tmp_path / "single"
    fit(configs[1], out_dir=single)

    def files(d):
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))

    assert files(outs[1]) == files(single)
    state = ckpt.load(outs[1] / "checkpoint")
    reference = make_model(configs[1], torch.device("cpu"))
    assert {k: v.shape for k, v in state.model.items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    for value in state.model.values():  # its own row, not the whole stack, is in the file
        assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
    groups = make_optimizer(reference, configs[1].train).state_dict()["param_groups"]
    assert state.optimizer["param_groups"] == groups  # lr, betas, the fused flag
    assert state.config == configs[1].to_dict()
    # fit continues the member alone, as it would have gone on in the pack.
    two = replace_keys(configs[1], {"train.epochs": 2})
    continued = fit(two, out_dir=outs[1])
    _assert_same_run(fit(two), continued)
    lines = (outs[1] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)[M.EPOCH] for line in lines] == [1, 2]


def test_a_finished_member_reports_like_fit(mnist_root, tmp_path):
    configs = _members(mnist_root, SPECS[:2], **{"train.epochs": 1})
    outs = [tmp_path / "a", tmp_path / "b"]
    first = fit_pack(configs, out_dirs=outs)
    again = fit_pack(configs, out_dirs=outs)  # nothing to train: the stored test metrics
    for a, b in zip(first, again, strict=True):
        assert b.final == a.final


@pytest.mark.parametrize(
    "key,value",
    [
        ("model.hidden", [64]),
        ("model.latent_dim", 3),
        ("model.activation", "tanh"),
        ("train.k", 2),
        ("train.objective", "iwae"),
        ("train.batch_size", 16),
        ("train.epochs", 3),
        ("data.binarize", "none"),
        ("data.val_size", 40),
    ],
)
def test_packs_refuse_mixed_shape_keys(mnist_root, key, value):
    configs = _members(mnist_root, SPECS[:2])
    check_packable(configs)  # seeds, betas and learning rates may differ
    configs.append(_config(mnist_root, **{key: value}))
    with pytest.raises(ConfigError, match=rf"^{key}: member 2 has .*train them in separate"):
        check_packable(configs)
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        fit_pack(configs)


def test_conv_members_train_vmapped_as_their_fits(mnist_root):
    configs = [
        _config(
            mnist_root,
            **{"model.arch": "conv", "model.hidden": [16], "train.seed": s, "train.epochs": 1},
        )
        for s in (0, 1)
    ]
    mode, why = fusion_mode(configs)
    assert mode == "vmap" and "model.arch: conv" in why
    assert fusion_mode(_members(mnist_root, SPECS[:2]))[0] == "stacked"
    packed = fit_pack(configs)
    for config, member in zip(configs, packed, strict=True):
        # vmap runs the convolutions as one grouped convolution: another kernel's rounding.
        # Adam turns rounding-level gradients of nearly idle weights into steps of up to lr,
        # so weights are compared to within two steps; every number to 1e-4 (or 1e-3 nats:
        # the mutual information of this nearly collapsed code is -0.002).
        single = fit(config)
        for row_a, row_b in zip(single.history, member.history, strict=True):
            for key in row_a:
                if key not in STATIC:
                    assert row_b[key] == pytest.approx(row_a[key], rel=1e-4, abs=1e-3), key
        for key, value in single.final.items():
            if key not in STATIC and isinstance(value, float):
                assert member.final[key] == pytest.approx(value, rel=1e-4, abs=1e-3), key
        sd_a, sd_b = single.model.state_dict(), member.model.state_dict()
        for key in sd_a:
            torch.testing.assert_close(sd_b[key], sd_a[key], rtol=0, atol=2e-3, msg=key)


def test_one_member_is_todays_trainer_bit_for_bit(mnist_root):
    config = _config(mnist_root, **{"train.seed": 4, "train.beta": 0.5})
    alone, single = fit_pack([config], final_eval=False)[0], fit(config, final_eval=False)
    for x, y in zip(
        alone.model.state_dict().values(), single.model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y)

    def strip(hist):
        return [{k: v for k, v in h.items() if k not in STATIC} for h in hist]

    assert strip(alone.history) == strip(single.history)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_members_on_cuda_equal_their_separate_fits_there(mnist_root):
    # cuBLAS's batched product rounds otherwise than its single one, and Adam turns
    # rounding-level gradients of nearly idle weights into steps of up to lr: the weights are
    # compared to within one step (seen: 0.01 lr on an H200), every metric to 1e-5.
    configs = [replace_keys(c, {"train.device": "cuda"}) for c in _members(mnist_root, SPECS)]
    packed = fit_pack(configs)
    for config, member in zip(configs, packed, strict=True):
        assert isinstance(member, FitResult)
        assert next(member.model.parameters()).device.type == "cuda"
        _assert_same_run(fit(config), member, weights_within=config.train.lr)
