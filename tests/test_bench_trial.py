"""bench_trial end to end on a tiny study: the real command line, the trial processes'
phase lines, every part of a trial with its floor, and the summary line."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from study_factory import tiny_study, write_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_trial_prints_every_part_and_the_summary_line(tmp_path):
    raw = tiny_study(tmp_path, **{"train.epochs": 2})
    raw["search"]["space"]["train.k"] = {"choice": [1, 5]}
    path = write_study(tmp_path, raw)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_trial.py"),
            "--study",
            str(path),
            "--base",
            '{"train.beta": 1.0, "model.latent_dim": 2}',
            "--study-trials",
            "2",
            "--keep",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    summary = re.search(r"^bench_trial: K=1 (\S+)x \| K=5 (\S+)x \| study (\S+)x$", text, re.M)
    assert summary, text
    assert all(float(r) >= 1.0 for r in summary.groups()), summary.group(0)  # floors are floors
    for part in (
        "start-up: launch to trainable",
        "start-up: data presented",
        "training epochs",
        "val/nll",
        "test/nll",
        "ELBO surgery",
        "checkpoint writes",
        "reports to Ray",
    ):
        assert text.count(part) == 2, part  # in each of the two base trials
    assert re.search(r"training epochs\s+2\s", text), text  # both epochs timed
    assert text.count("the study, 2 trials") == 1


def test_a_studys_floor_is_divided_by_the_trials_it_runs_at_once_not_by_the_cores():
    spec = importlib.util.spec_from_file_location(
        "bench_trial", ROOT / "benchmarks" / "bench_trial.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.trials_at_once(2, 1) == 2
    assert bench.trials_at_once(2, 2) == 1  # one two-thread trial: its floor is at 2 threads
    assert bench.trials_at_once(16, 3) == 5
    assert bench.trials_at_once(1, 2) == 1
