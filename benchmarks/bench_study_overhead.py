"""The cost of the study machinery itself (Ray Tune + Optuna + our driver), per trial.

A study of many 1-epoch trials on a small subset; its wall time (Ray already started)
against the sum of its trials' own time at the same concurrency:

    overhead per trial = (wall * concurrency - sum of trial times) / trials

Ray's own scalability test holds its overhead to about 0.15 s per trial per slot.
Usage: VAE_STUDY_DATA=../shared/data python benchmarks/bench_study_overhead.py [--trials 32]
(without real data it writes a tiny MNIST-format dataset to a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import ray

from vae_study.config.study import study_from_dict
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, RESULTS_FILE
from vae_study.study.driver import run_study


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--subset", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vae_study_bench_"))
    root = os.environ.get("VAE_STUDY_DATA")
    if not root or not Path(root, "mnist").is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import write_mnist

        root = str(write_mnist(tmp / "data", n_train=args.subset + 500, n_test=500))
    ray.init(num_cpus=args.concurrency, include_dashboard=False, logging_level="ERROR")
    small = max(2, args.concurrency)
    runs = {}
    for trials in (small, args.trials):  # the difference removes one-time costs
        runs[trials] = _run(tmp / str(trials), root, args, trials)
    ray.shutdown()
    (w_small, b_small), (w_big, b_big) = runs[small], runs[args.trials]
    c = args.concurrency
    print(f"1-epoch trials on {args.subset} images, concurrency {c}, {os.cpu_count()} CPUs")
    for n, (w, b) in runs.items():
        print(
            f"  {n:4d} trials: study wall {w:6.1f} s, sum of trial times {b:6.1f} s, "
            f"overhead {(w * c - b) / n:.3f} s per trial per slot (one-time costs included)"
        )
    marginal = ((w_big - w_small) * c - (b_big - b_small)) / (args.trials - small)
    print(
        f"marginal overhead per trial per slot = {marginal:.3f} s (the {args.trials}-trial "
        f"study less the {small}-trial one; Ray's scalability target is about 0.15 s)"
    )


def _run(tmp: Path, root: str, args: argparse.Namespace, trials: int) -> tuple[float, float]:
    study = study_from_dict(
        {
            "name": "overhead",
            "output": {"dir": str(tmp / "runs")},
            "data": {"root": root, "train_subset": args.subset, "val_size": 500},
            "model": {"hidden": [64], "latent_dim": 4},
            "train": {"epochs": 1, "batch_size": 128, "device": "cpu"},
            "eval": {"k": 10, "nll_examples": 200, "surgery_examples": 200},
            "search": {
                "algorithm": "random",
                "num_trials": trials,
                "max_concurrent": args.concurrency,
                "space": {"train.beta": {"log_uniform": [0.1, 10.0]}},
            },
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
            "ray": {"dashboard": False},
            "report": {"enabled": False},
        }
    )
    t0 = time.perf_counter()
    folder = run_study(study, verbose=0)
    wall = time.perf_counter() - t0
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == trials and (table["status"] == COMPLETED).all()
    return wall, float(table["time/total_s"].sum())  # each trial's own time inside fit


if __name__ == "__main__":
    main()
