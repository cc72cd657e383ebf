"""A run stopped and continued: resuming on another device, Ctrl-C (in a terminal or a
notebook) leaving a checkpoint that resumes, and fit never overwriting a folder it did not
make."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_mnist
from study_factory import same_weights
from study_factory import small_run_config as _config
from vae_study import metrics as M
from vae_study.cli import main
from vae_study.core import checkpoint as ckpt
from vae_study.core.train import fit
from vae_study.errors import ConfigError

# --- the generator state, whatever map_location does ----------------------------------------


def _saved_state(folder) -> tuple[ckpt.TrainingState, torch.Generator]:
    """A checkpoint of a small model after one Adam step, and the generator it saved."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(123)
    torch.rand(5, generator=gen)  # a state that is not the seed's
    state = ckpt.TrainingState(
        epoch=3,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        generator=gen.get_state(),
        config={"a": 1},
        history=[],
    )
    ckpt.save(folder, state)
    return state, gen


def test_generator_state_comes_back_on_the_cpu_whatever_map_location(tmp_path):
    saved, gen = _saved_state(tmp_path)
    # The fault: torch.load moves every tensor, the generator state too, and set_state
    # accepts only a CPU ByteTensor.
    moved = torch.load(tmp_path / ckpt.STATE_FILE, map_location="meta", weights_only=True)
    assert moved["generator"].device.type == "meta"
    with pytest.raises((TypeError, RuntimeError)):
        torch.Generator().set_state(moved["generator"])

    state = ckpt.load(tmp_path, map_location="meta")
    assert state.generator.device.type == "cpu" and state.generator.dtype == torch.uint8
    assert torch.equal(state.generator, saved.generator)
    restored = torch.Generator()
    restored.set_state(state.generator)
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=gen))
    # Everything else went where map_location said.
    assert all(t.device.type == "meta" for t in state.model.values())
    opt_tensors = [
        v
        for s in state.optimizer["state"].values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    ]
    assert len(opt_tensors) == 6 and all(t.device.type == "meta" for t in opt_tensors)
    assert state.epoch == 3 and state.config == {"a": 1}


def test_load_on_the_cpu_gives_the_saved_tensors(tmp_path):
    saved, _ = _saved_state(tmp_path)
    state = ckpt.load(tmp_path)
    assert all(torch.equal(state.model[k], v) for k, v in saved.model.items())
    assert state.optimizer["param_groups"] == saved.optimizer["param_groups"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_resumes_on_cuda(mnist_root, tmp_path):
    # A checkpoint written on the CPU continued on the GPU (train.device may change), then
    # a checkpoint written on the GPU continued there.
    fit(
        _config(mnist_root, **{"train.epochs": 1}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    res = fit(
        _config(mnist_root, **{"train.device": "cuda"}),
        out_dir=tmp_path / "a",
        final_eval=False,
    )
    assert [h[M.EPOCH] for h in res.history] == [1, 2]
    assert next(res.model.parameters()).device.type == "cuda"
    straight = fit(
        _config(mnist_root, **{"train.device": "cuda", "train.epochs": 3}),
        out_dir=tmp_path / "b",
    )
    fit(
        _config(mnist_root, **{"train.device": "cuda", "train.epochs": 2}),
        out_dir=tmp_path / "c",
        final_eval=False,
    )
    resumed = fit(
        _config(mnist_root, **{"train.device": "cuda", "train.epochs": 3}),
        out_dir=tmp_path / "c",
    )
    assert [h[M.EPOCH] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1][M.TRAIN_LOSS] == pytest.approx(
        straight.history[-1][M.TRAIN_LOSS], rel=1e-4
    )
    assert resumed.final[M.TEST_CE_BOUND] == pytest.approx(
        straight.final[M.TEST_CE_BOUND], rel=1e-3
    )


# --- Ctrl-C ----------------------------------------------------------------------------------


def _epochs(path) -> list[int]:
    return [json.loads(line)[M.EPOCH] for line in path.read_text().splitlines()]


def test_ctrl_c_in_a_terminal_leaves_a_checkpoint_the_same_command_continues(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=1000, n_test=100)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: {{root: {root}, val_size: 50}}\n"
        "model: {latent_dim: 2, hidden: [16]}\n"
        "train: {epochs: 30, batch_size: 32, device: cpu}\n"
        "eval: {k: 4, surgery_examples: 50, nll_examples: 50}\n"
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vae_study", "fit", str(config), "--out", str(out)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    state = out / "checkpoint" / ckpt.STATE_FILE
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    kept = ckpt.load(out / "checkpoint").epoch
    assert 1 <= kept < 30  # interrupted mid-run, after at least one checkpoint
    lines = [x for x in stderr.splitlines() if "interrupted" in x]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert f"holds epoch {kept}" in lines[0] and "same command" in lines[0]
    assert f"fit {config} --out {out}" in lines[0]
    # What the interrupt left agrees with itself: every finished epoch once, in both files.
    assert _epochs(out / "metrics.jsonl") == list(range(1, kept + 1))
    assert [h[M.EPOCH] for h in ckpt.load(out / "checkpoint").history] == list(range(1, kept + 1))
    assert not (out / "final.json").exists()

    again = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert again.returncode == 0, again.stderr
    printed = [
        int(x.split()[1].split("/")[0]) for x in again.stdout.splitlines() if x.startswith("epoch ")
    ]
    assert printed == list(range(kept + 1, 31))  # continues, does not restart at 1
    assert _epochs(out / "metrics.jsonl") == list(range(1, 31))
    assert json.loads((out / "final.json").read_text())[M.EPOCH] == 30


def test_a_notebook_interrupt_in_fit_resumes_exactly(mnist_root, tmp_path):
    cfg = _config(mnist_root, **{"train.epochs": 4})

    def interrupt(row, _folder):
        if row[M.EPOCH] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, out_dir=tmp_path / "nb", on_epoch=interrupt)
    assert ckpt.load(tmp_path / "nb" / "checkpoint").epoch == 2
    assert _epochs(tmp_path / "nb" / "metrics.jsonl") == [1, 2]
    resumed = fit(cfg, out_dir=tmp_path / "nb")
    straight = fit(cfg)
    assert [h[M.EPOCH] for h in resumed.history] == [1, 2, 3, 4]
    assert _epochs(tmp_path / "nb" / "metrics.jsonl") == [1, 2, 3, 4]
    assert same_weights(resumed.model, straight.model)
    assert resumed.final[M.TEST_CE_BOUND] == straight.final[M.TEST_CE_BOUND]


def test_ctrl_c_between_the_checkpoint_and_its_metrics_line_waits_for_both(
    mnist_root, tmp_path, monkeypatch
):
    # SIGINT arrives right after state.pt of epoch 2 is written, before metrics.jsonl gets
    # epoch 2's line: the interrupt must wait until both are written.
    real = ckpt.write_yaml

    def write_yaml_then_ctrl_c(path, obj):
        real(path, obj)
        if path.parent.name == "checkpoint" and ckpt.load(path.parent).epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ckpt, "write_yaml", write_yaml_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        fit(_config(mnist_root, **{"train.epochs": 4}), out_dir=tmp_path / "r")
    assert ckpt.load(tmp_path / "r" / "checkpoint").epoch == 2
    assert _epochs(tmp_path / "r" / "metrics.jsonl") == [1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_an_interrupt_mid_write_leaves_the_old_checkpoint_whole(mnist_root, tmp_path, monkeypatch):
    out = tmp_path / "r"
    fit(_config(mnist_root, **{"train.epochs": 1}), out_dir=out, final_eval=False)
    before = (out / "checkpoint" / ckpt.STATE_FILE).read_bytes()

    def interrupted_fsync(fd):
        raise KeyboardInterrupt  # the new state.pt is half on disk

    monkeypatch.setattr(ckpt.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        fit(_config(mnist_root), out_dir=out)
    monkeypatch.undo()
    assert (out / "checkpoint" / ckpt.STATE_FILE).read_bytes() == before
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "config.yaml",
        ckpt.STATE_FILE,
    ]
    assert _epochs(out / "metrics.jsonl") == [1]
    res = fit(_config(mnist_root), out_dir=out)
    assert [h[M.EPOCH] for h in res.history] == [1, 2]


# --- fit never overwrites a folder it did not make ------------------------------------------


def _users_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in (
        ("config.yaml", "my: settings\n"),
        ("final.json", '{"mine": 1}\n'),
        ("notes.txt", "years of work\n"),
    ):
        (folder / name).write_text(text)
    return folder


def _untouched(folder) -> bool:
    return (
        sorted(p.name for p in folder.iterdir()) == ["config.yaml", "final.json", "notes.txt"]
        and (folder / "config.yaml").read_text() == "my: settings\n"
        and (folder / "final.json").read_text() == '{"mine": 1}\n'
    )


@pytest.mark.parametrize("fresh", [[], ["--fresh"]])
def test_fit_refuses_an_output_folder_it_did_not_make(mnist_root, tmp_path, capsys, fresh):
    folder = _users_folder(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: {{root: {mnist_root}, val_size: 50}}\n"
        "model: {latent_dim: 2, hidden: [16]}\ntrain: {epochs: 1, device: cpu}\n"
    )
    assert main(["fit", str(config), "--out", str(folder), *fresh]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(folder) in err and "not a fit output folder" in err and "new or empty" in err
    assert _untouched(folder)


def test_the_python_api_refuses_it_too(mnist_root, tmp_path):
    folder = _users_folder(tmp_path)
    with pytest.raises(ConfigError, match=rf"{folder}.*not a fit output folder"):
        fit(_config(mnist_root, **{"train.epochs": 1}), out_dir=folder)
    assert _untouched(folder)
    # metrics.jsonl without config.yaml, or a checkpoint folder without state.pt: not fit's.
    other = tmp_path / "other"
    (other / "checkpoint").mkdir(parents=True)
    (other / "metrics.jsonl").write_text('{"epoch": 7}\n')
    with pytest.raises(ConfigError, match=rf"{other}.*not a fit output folder"):
        fit(_config(mnist_root, **{"train.epochs": 1}), out_dir=other)
    assert (other / "metrics.jsonl").read_text() == '{"epoch": 7}\n'
    with pytest.raises(ConfigError, match="is a file"):
        fit(_config(mnist_root, **{"train.epochs": 1}), out_dir=folder / "notes.txt")


def test_fit_takes_an_empty_folder_and_its_own(mnist_root, tmp_path):
    cfg = _config(mnist_root, **{"train.epochs": 1})
    empty = tmp_path / "empty"
    empty.mkdir()
    fit(cfg, out_dir=empty, final_eval=False)
    # Its own folder, interrupted before the first epoch ended: config.yaml + metrics.jsonl.
    (empty / "checkpoint" / ckpt.STATE_FILE).unlink()
    (empty / "metrics.jsonl").write_text("")
    res = fit(cfg, out_dir=empty)
    assert [h[M.EPOCH] for h in res.history] == [1]
    # A checkpoint alone is fit's too (e.g. copied from a trial).
    only = tmp_path / "only"
    (only / "checkpoint").mkdir(parents=True)
    shutil.copy(empty / "checkpoint" / ckpt.STATE_FILE, only / "checkpoint")
    assert fit(cfg, out_dir=only).history[-1][M.EPOCH] == 1


def test_a_checkpoint_from_another_device_type_resumes_on_a_new_seeded_stream(mnist_root, tmp_path):
    # A CUDA generator's state is 16 bytes (seed, offset), a CPU one's 5056: a checkpoint
    # written on a GPU and resumed on a CPU (or the other way) cannot continue its stream.
    cfg = _config(mnist_root, **{"train.epochs": 3})
    for name in ("a", "b"):
        fit(
            _config(mnist_root, **{"train.epochs": 1}),
            out_dir=tmp_path / name,
            final_eval=False,
        )
        state = ckpt.load(tmp_path / name / "checkpoint")
        state.generator = torch.tensor([7] * 8 + [0] * 8, dtype=torch.uint8)  # as CUDA's
        ckpt.save(tmp_path / name / "checkpoint", state)
    a = fit(cfg, out_dir=tmp_path / "a")
    b = fit(cfg, out_dir=tmp_path / "b")
    assert [h[M.EPOCH] for h in a.history] == [1, 2, 3]
    assert same_weights(a.model, b.model)  # reproducible: the same new stream each time
    straight = fit(cfg)
    assert not same_weights(a.model, straight.model)  # a new stream, not the old one
