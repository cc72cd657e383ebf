"""Phase timings for the benchmarks: written only when asked for, one line per phase of a
real fit, and the trial benchmark's FLOP counts and ratios from them."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from study_factory import small_run_config
from vae_study import timing
from vae_study.config.schema import to_dict
from vae_study.core.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _bench_trial():
    spec = importlib.util.spec_from_file_location("bench_trial", ROOT / "benchmarks/bench_trial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(timing.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with timing.phase("anything"):
        pass
    timing.event("anything")
    assert list(tmp_path.iterdir()) == []


def test_phases_and_events_are_lines_with_their_fields(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timing.ENV, str(path))
    timing.bind(trial="abc")
    try:
        with timing.phase("outer", epoch=3):
            timing.event("inside", n=1)
        with pytest.raises(ValueError), timing.phase("fails"):
            raise ValueError("x")
    finally:
        timing.bind(trial=None)
    timing.event("after")
    with open(path, "a") as f:
        f.write('{"phase": "torn')  # a process killed mid-line
    lines = timing.read(path)
    assert [ln.get("phase") or ln.get("event") for ln in lines] == [
        "inside",
        "outer",
        "fails",
        "after",
    ]
    inside, outer, fails, after = lines
    assert inside["trial"] == outer["trial"] == "abc" and inside["n"] == 1
    assert outer["epoch"] == 3 and outer["seconds"] >= 0 and "raised" not in outer
    assert outer["start"] <= inside["start"]
    assert fails["raised"] is True and fails["trial"] == "abc"
    assert "trial" not in after


def test_a_fit_writes_each_of_its_parts(mnist_root, tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timing.ENV, str(path))
    fit(small_run_config(mnist_root, **{"train.epochs": 2}), out_dir=tmp_path / "run")
    names = [ln["phase"] for ln in timing.read(path)]
    assert names.count("train_epoch") == names.count("validation") == 2
    assert names.count("checkpoint") == 2
    for name in ("val_nll", "test_elbo", "test_encode", "test_nll", "test_bound_gap"):
        assert names.count(name) == 1, name
    assert names.count("test_surgery") == 1
    assert names.index("test_nll") > names.index("train_epoch")


def test_trial_flops_are_counted_from_the_shapes():
    bench = _bench_trial()
    member = to_dict(small_run_config(Path("."), **{"model.hidden": [3], "model.latent_dim": 2}))
    member["train"]["k"] = 2
    member["eval"].update(k=7, val_k=5, val_examples=4, nll_examples=6, surgery_examples=8)
    flops = bench.part_flops(member, {"train": 10, "val": 9, "test": 20}, d_in=4)
    enc = 2 * (4 * 3 + 3 * 4)  # 4 -> 3 -> (mu, logvar) of 2 each
    dec = 2 * (2 * 3 + 3 * 4)  # 2 -> 3 -> 4
    assert flops["train_epoch"] == 10 * (3 * enc - 2 * 4 * 3 + 2 * 3 * dec)
    assert flops["validation"] == 9 * (enc + dec)
    assert flops["val_nll"] == 4 * (enc + 5 * dec)
    assert flops["test_nll"] == 6 * (enc + 7 * dec)
    assert flops["test_elbo"] == 20 * (enc + dec)
    assert flops["test_surgery"] == 4 * 8 * 8 * 2


def test_a_trial_s_ratio_is_its_wall_over_its_parts_floors(tmp_path):
    bench = _bench_trial()
    member = to_dict(small_run_config(Path("."), **{"model.hidden": [3], "model.latent_dim": 2}))
    splits = {"train": 10, "val": 9, "test": 20}
    lines = [
        {"event": "trial_launched", "trial": "t", "start": 100.0},
        {"event": "trial_entered", "trial": "t", "start": 101.5},
        {"event": "trial_config", "trial": "t", "start": 101.6, "members": [member],
         "threads": 1, "splits": splits, "shape": [1, 2, 2]},
        {"phase": "present", "trial": "t", "start": 101.6, "seconds": 0.5},
        {"phase": "train_epoch", "trial": "t", "start": 102.0, "seconds": 2.0},
        {"phase": "train_epoch", "trial": "t", "start": 104.0, "seconds": 3.0},
        {"phase": "checkpoint", "trial": "t", "start": 107.0, "seconds": 0.25},
        {"event": "trial_ended", "trial": "t", "start": 110.0},
    ]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("".join(__import__("json").dumps(ln) + "\n" for ln in lines))
    rate = 1e3  # FLOP/s
    (trial,) = bench.trials_of(path, {1: (rate, rate / 2)})
    rows = {r[0]: r for r in trial.rows()}
    assert trial.wall == 10.0
    assert rows["start-up: launch to trainable"][1] == 1.5
    assert rows["training epochs"][1] == 5.0 and rows["training epochs"][4] == 2
    train_floor = 2 * bench.part_flops(member, splits, 4)["train_epoch"] / rate
    assert rows["training epochs"][3] == pytest.approx(train_floor)
    assert rows["the rest (Ray, between parts)"][1] == pytest.approx(10 - 1.5 - 0.5 - 5 - 0.25)
    assert trial.ratio() == pytest.approx(10.0 / train_floor)
    assert math.isfinite(trial.ratio())
