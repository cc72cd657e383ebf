"""How long each shipped study takes on this machine, from a shortened run scaled up.

For every kind of trial a study runs (the values of its searched keys that change the cost
of a trial: K, the objective, the latent size, ...), two ``fit`` runs on the real data, with the
study's evaluation settings and one thread (a trial's ``cpus_per_trial``), measure the
setup (data and model), one epoch with its validation bound and the final test evaluation
(see ``time_kind``). A trial of E epochs is then setup + E * epoch
+ final; the study is the sum of its trials (grid: each point; a sampler: its trials split
evenly over the kinds) plus its confirmation (``search.confirm``: top x replicates trials of
the costliest kind, an upper bound), run ``min(max_concurrent, cores)`` at a time.

    VAE_STUDY_DATA=../shared/data python benchmarks/time_studies.py [--cores 2] [STUDY ...]

Prints one line per kind and per study. The figures are what the studies' headers state.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vae_study.config.run import replace_keys  # noqa: E402
from vae_study.config.study import load_study  # noqa: E402
from vae_study.core.train import fit  # noqa: E402

QUESTION_STUDIES = ["beta_sweep", "iwae_k_sweep", "latent_sweep", "rd_pareto"]
COST_KEYS = ("train.k", "train.objective", "model.latent_dim")  # what changes a trial's cost


def kinds(study) -> list[dict]:
    """The distinct settings of the cost keys the study searches (one fit each)."""
    choices = {}
    for p in study.search.space:
        if p.key in COST_KEYS and p.kind == "choice":
            choices[p.key] = list(p.values)
    keys = sorted(choices)
    grid = itertools.product(*(choices[k] for k in keys))
    return [dict(zip(keys, vals, strict=True)) for vals in grid]


def time_kind(study, params: dict) -> dict[str, float]:
    """Setup, one epoch (training and its validation bound) and the final evaluation, in
    seconds: two epochs without the final evaluation, then one epoch with it (the last
    epoch's hook runs after the final evaluation, so the two are told apart this way)."""
    config = replace_keys(study.trial_config(params), {"train.device": "cpu"})

    def run(epochs: int, final: bool) -> list[float]:
        marks = [time.perf_counter()]
        with tempfile.TemporaryDirectory() as tmp:
            fit(
                replace_keys(config, {"train.epochs": epochs}),
                out_dir=Path(tmp) / "fit",
                on_epoch=lambda row, ckpt: marks.append(time.perf_counter()),
                final_eval=final,
            )
        marks.append(time.perf_counter())
        return marks

    a = run(2, final=False)
    epoch = a[2] - a[1]
    setup = a[1] - a[0] - epoch
    b = run(1, final=True)
    return {"setup": setup, "epoch": epoch, "final": b[-1] - b[0] - setup - epoch}


def trial_seconds(t: dict[str, float], epochs: int) -> float:
    return max(t["setup"], 0.0) + epochs * t["epoch"] + t["final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", default=QUESTION_STUDIES)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.studies:
        study = load_study(ROOT / "studies" / f"{name}.yaml")
        parallel = max(1, min(study.search.max_concurrent, args.cores))
        times = []
        epochs = study.base.train.epochs
        for params in kinds(study) or [{}]:
            t = time_kind(study, params)
            times.append((params, t))
            print(
                f"{name} {params or 'one kind'}: setup {t['setup']:.1f} s, epoch "
                f"{t['epoch']:.1f} s, final evaluation {t['final']:.1f} s; a trial of "
                f"{epochs} epochs {trial_seconds(t, epochs) / 60:.1f} min",
                flush=True,
            )
        per_trial = [trial_seconds(t, epochs) for _, t in times]
        n = study.search.num_trials
        search = n * sum(per_trial) / len(per_trial)  # a grid has one trial per kind
        confirm = study.search.confirm
        extra = confirm.top * confirm.replicates * max(per_trial) if confirm else 0.0
        total = (search + extra) / parallel
        print(
            f"{name}: {n} trials, {parallel} at a time on {args.cores} cores: search "
            f"{search / parallel / 60:.0f} min"
            + (
                f", confirmation ({confirm.top} x {confirm.replicates} seeds) at most "
                f"{extra / parallel / 60:.0f} min"
                if confirm
                else ""
            )
            + f"; about {total / 3600:.1f} h ({math.ceil(total / 60)} min)",
            flush=True,
        )


if __name__ == "__main__":
    main()
