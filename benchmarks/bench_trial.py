"""Where a study trial's wall time goes, part by part, against the floor of its arithmetic.

Runs real trials of a shipped study through the real command line (``python -m vae_study
run``: Ray Tune, the trainable, the record), with ``VAE_STUDY_TIMINGS`` set so that the
trial processes write each phase's seconds (``vae_study.timing``):

1. the study's base configuration at K=1 and at K=5 (``--base``), the two trials at once as
   the study runs them, no confirmation, no report;
2. the study itself shortened to ``--study-trials`` trials (default 6), with no confirmation
   and no report (``--skip-study`` leaves it out).

Per trial it prints start-up (from Tune's launch of the trial to the trainable, and the
data presented to the trial), every training epoch, the per-epoch validation, each final
metric, the checkpoint writes, the reports to Ray and the rest; beside each, its floor: its
matrix-product FLOPs (counted from the shapes; printed) divided by this machine's GEMM
rate at the trial's thread count, measured in this run on a large square product (float32;
float64 for the surgery's float64 products), and the ratio wall / floor. Parts without
matrix products (start-up, checkpoints, reports) have a floor of 0: all of their time is
above the floor. The last line is

    bench_trial: K=1 <ratio>x | K=5 <ratio>x | study <ratio>x

a trial's ratio being its wall time over the sum of its parts' floors, and the study's its
wall time (the command, start to end) over the sum of its trials' floors divided by the
trials that run at a time (the cores over the threads a trial: each floor is at the trial's
thread count already). MLP models only (the shipped studies' ``arch: mlp``).

    VAE_STUDY_DATA=../shared/data python benchmarks/bench_trial.py [--study studies/beta_sweep.yaml]
        [--epochs N] [--set KEY=VALUE ...] [--skip-study] [--study-trials 6]

``--epochs`` and ``--set`` change both runs (a shorter check; the ratios then describe that
shorter trial).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vae_study import timing  # noqa: E402

# The searched values of the configuration both benchmarks time (bench_step's too).
BASE_VALUES = '{"train.beta": 1.0, "model.latent_dim": 32}'

# The phases a trial writes, in the order printed, with what each is.
EVAL_PHASES = {
    "val_nll": "val/nll (-L_K on validation)",
    "test_elbo": "test -ELBO, rate, distortion",
    "test_encode": "test encoder pass (active units, KL/dim)",
    "test_nll": "test/nll (-L_K on test)",
    "test_bound_gap": "test bound gap (-ELBO per example)",
    "test_surgery": "ELBO surgery (float64)",
}


# ---------------------------------------------------------------------------------------
# FLOPs from the shapes (2 * m * n * k per product; forward, and backward for training)


def layer_widths(member: dict[str, Any], d_in: int) -> tuple[list[int], list[int]]:
    """The encoder's and the decoder's widths, input first (encoder output: mu and logvar)."""
    model = member["model"]
    if model.get("arch", "mlp") != "mlp":
        raise SystemExit(f"bench_trial counts FLOPs of MLP models only, not {model['arch']!r}")
    hidden, latent = [int(h) for h in model["hidden"]], int(model["latent_dim"])
    return [d_in, *hidden, 2 * latent], [latent, *reversed(hidden), d_in]


def product_flops(widths: list[int]) -> float:
    """FLOPs of one row through the linear layers ``widths[0] -> widths[1] -> ...``."""
    return float(sum(2 * a * b for a, b in zip(widths, widths[1:], strict=False)))


def part_flops(member: dict[str, Any], splits: dict[str, int], d_in: int) -> dict[str, float]:
    """float32 matrix-product FLOPs of each part of one trial of ``member`` (a run config as
    a dict), surgery in float64 (its own key ``test_surgery``), per epoch for the two epoch
    parts. Training: forward, plus the backward's weight gradients (as many FLOPs) and its
    input gradients for every layer but the first (whose input, the data, needs none)."""
    enc_w, dec_w = layer_widths(member, d_in)
    enc, dec = product_flops(enc_w), product_flops(dec_w)
    first = 2.0 * enc_w[0] * enc_w[1]
    k = int(member["train"]["k"])
    ev = member["eval"]
    n_test = splits["test"]
    nll_n = n_test if ev["nll_examples"] is None else min(int(ev["nll_examples"]), n_test)
    val_n = min(int(ev["val_examples"]), splits["val"])
    m = min(int(ev["surgery_examples"]), n_test)
    latent = int(member["model"]["latent_dim"])
    return {
        "train_epoch": splits["train"] * (3 * enc - first + k * 3 * dec),
        "validation": splits["val"] * (enc + dec),
        "val_nll": val_n * (enc + int(ev["val_k"]) * dec),
        "test_elbo": n_test * (enc + dec),
        "test_encode": n_test * enc,
        "test_nll": nll_n * (enc + int(ev["k"]) * dec),
        "test_bound_gap": nll_n * (enc + dec),
        "test_surgery": 2 * 2.0 * m * m * latent,  # two (m, D) @ (D, m) products, float64
    }


def trials_at_once(cores: int, threads: int) -> int:
    """How many trials of ``threads`` threads a study runs side by side on ``cores``: what a
    study's summed floors are divided by (each floor is at the trial's thread count)."""
    return max(1, cores // max(1, threads))


def gemm_rate(dtype: str, threads: int, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an (n, n) @ (n, n) product at ``threads`` threads, the best of ``reps``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, dtype=getattr(torch, dtype))
        a @ b  # warm up
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n**3 / best


# ---------------------------------------------------------------------------------------
# One trial's parts from the timings file


class Trial:
    """One Ray trial's timing lines: its parts' seconds and floors."""

    def __init__(self, trial_id: str, lines: list[dict[str, Any]], rates: dict[int, tuple]):
        self.id = trial_id
        self.events = {ln["event"]: ln for ln in lines if "event" in ln}
        self.phases = [ln for ln in lines if "phase" in ln]
        cfg = self.events["trial_config"]
        self.member = cfg["members"][0]
        if len(cfg["members"]) != 1:
            raise SystemExit(f"trial {trial_id} is a pack of {len(cfg['members'])}: not counted")
        self.threads = int(cfg["threads"])
        self.splits = cfg["splits"]
        shape = cfg.get("shape") or [1, 28, 28]
        self.flops = part_flops(self.member, self.splits, math.prod(shape))
        self.rate32, self.rate64 = rates[self.threads]
        self.wall = self.events["trial_ended"]["start"] - self.events["trial_launched"]["start"]
        self.k = int(self.member["train"]["k"])
        self.latent = int(self.member["model"]["latent_dim"])

    def seconds(self, name: str) -> list[float]:
        return [p["seconds"] for p in self.phases if p["phase"] == name]

    def floor(self, name: str) -> float:
        rate = self.rate64 if name == "test_surgery" else self.rate32
        return self.flops.get(name, 0.0) / rate

    def rows(self) -> list[tuple[str, float, float, float, int]]:
        """(part, seconds, FLOPs, floor seconds, times) per part, then the rest."""
        launched = self.events["trial_launched"]["start"]
        entered = self.events["trial_entered"]["start"] - launched
        out = [("start-up: launch to trainable", entered, 0.0, 0.0, 1)]
        out.append(("start-up: data presented", sum(self.seconds("present")), 0.0, 0.0, 1))
        for name, what in [("train_epoch", "training epochs"), ("validation", "epoch -ELBO")]:
            secs = self.seconds(name)
            out.append(
                (
                    what,
                    sum(secs),
                    self.flops[name] * len(secs),
                    self.floor(name) * len(secs),
                    len(secs),
                )
            )
        for name, what in EVAL_PHASES.items():
            secs = self.seconds(name)
            if secs:
                out.append((what, sum(secs), self.flops[name], self.floor(name), len(secs)))
        for name, what in [("checkpoint", "checkpoint writes"), ("report", "reports to Ray")]:
            secs = self.seconds(name)
            out.append((what, sum(secs), 0.0, 0.0, len(secs)))
        out.append(
            ("the rest (Ray, between parts)", self.wall - sum(r[1] for r in out), 0.0, 0.0, 1)
        )
        return out

    def total_floor(self) -> float:
        return sum(r[3] for r in self.rows())

    def ratio(self) -> float:
        return self.wall / self.total_floor()

    def print(self) -> None:
        print(
            f"\ntrial {self.id}: K={self.k}, latent {self.latent}, "
            f"{self.threads} thread(s), wall {self.wall:.1f} s, floor {self.total_floor():.1f} s, "
            f"ratio {self.ratio():.2f}x"
        )
        print(
            f"  {'part':42s} {'n':>3s} {'seconds':>8s} {'GFLOP':>9s} {'floor s':>8s} {'ratio':>7s}"
        )
        for what, secs, flops, floor, n in self.rows():
            ratio = f"{secs / floor:6.2f}x" if floor > 0 else "      -"
            gf = f"{flops / 1e9:9.1f}" if flops else "        -"
            fl = f"{floor:8.2f}" if floor else "       0"
            print(f"  {what:42s} {n:3d} {secs:8.2f} {gf} {fl} {ratio}")
        epochs = self.seconds("train_epoch")
        if len(epochs) > 1:
            print(
                f"  epochs: median {statistics.median(epochs):.2f} s, "
                f"min {min(epochs):.2f}, max {max(epochs):.2f} "
                f"(floor {self.floor('train_epoch'):.2f})"
            )


def trials_of(path: Path, rates: dict[int, tuple]) -> list[Trial]:
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for line in timing.read(path):
        if "trial" in line:
            by_trial.setdefault(line["trial"], []).append(line)
    done = {
        t: ls for t, ls in by_trial.items() if any(ln.get("event") == "trial_ended" for ln in ls)
    }
    return [Trial(t, ls, rates) for t, ls in sorted(done.items(), key=lambda kv: kv[1][0]["start"])]


# ---------------------------------------------------------------------------------------
# Running the study


def set_key(study: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = study
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def derived_study(base: Path, out: Path, name: str, changes: dict[str, Any]) -> Path:
    """``base`` with the changes (dotted keys), its output under ``out``, no confirmation
    and no report; written as ``out/name.yaml``."""
    study = yaml.safe_load(base.read_text())
    study["name"] = name
    study.setdefault("output", {})["dir"] = str(out / "runs")
    study.setdefault("report", {})["enabled"] = False
    study.get("search", {}).pop("confirm", None)
    for key, value in changes.items():
        set_key(study, key, value)
    search = study.setdefault("search", {})
    if "num_trials" in search and "max_concurrent" in search:
        search["max_concurrent"] = min(search["max_concurrent"], search["num_trials"])
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_study(path: Path, timings: Path) -> float:
    """Wall seconds of ``python -m vae_study run path`` with phases written to ``timings``."""
    env = {**os.environ, timing.ENV: str(timings)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vae_study", "run", str(path)],
        env=env,
        cwd=path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit(f"the study {path.name} exited {proc.returncode}")
    return wall


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: give KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "beta_sweep.yaml"))
    ap.add_argument(
        "--base",
        default=BASE_VALUES,
        help="the base configuration's searched values (JSON), run at K=1 and K=5",
    )
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs of both runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--study-trials", type=int, default=6)
    ap.add_argument("--skip-study", action="store_true", help="the K=1 and K=5 pair only")
    ap.add_argument("--skip-pair", action="store_true", help="the shortened study only")
    ap.add_argument("--keep", default=None, help="a folder to keep the runs and timings in")
    args = ap.parse_args(argv)

    changes = parse_sets(args.set)
    if args.epochs is not None:
        changes["train.epochs"] = args.epochs
    if not os.environ.get("VAE_STUDY_DATA") and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["VAE_STUDY_DATA"] = str(ROOT.parent / "shared" / "data")
    if os.environ.get("VAE_STUDY_DATA"):  # the studies run in a folder of their own
        data = Path(os.environ["VAE_STUDY_DATA"]).expanduser()
        os.environ["VAE_STUDY_DATA"] = str(data.resolve())
    base = {**json.loads(args.base)}
    study = Path(args.study).resolve()
    cores = os.cpu_count() or 1
    threads = int(yaml.safe_load(study.read_text()).get("resources", {}).get("cpus_per_trial", 1))
    threads = int(changes.get("resources.cpus_per_trial", threads))

    print(f"bench_trial: {study.name}, {cores} cores, {threads} thread(s) a trial")
    rates = {threads: (gemm_rate("float32", threads), gemm_rate("float64", threads))}
    print(
        f"GEMM (2048^3, {threads} thread(s)): float32 {rates[threads][0] / 1e9:.1f} GFLOP/s, "
        f"float64 {rates[threads][1] / 1e9:.1f} GFLOP/s"
    )

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_trial_"))
    work.mkdir(parents=True, exist_ok=True)
    summary = []
    if not args.skip_pair:
        points = [{**base, "train.k": 1}, {**base, "train.k": 5}]
        pair = derived_study(
            study,
            work,
            "bench_trial_pair",
            {**changes, "search.num_trials": 2, "search.points_to_evaluate": points},
        )
        timings = work / "pair_timings.jsonl"
        pair_wall = run_study(pair, timings)
        trials = trials_of(timings, rates)
        print(f"\nK=1 and K=5 base trials, 2 at a time: the command took {pair_wall:.1f} s")
        for t in trials:
            t.print()
        ratios = {t.k: t.ratio() for t in trials}
        summary += [f"K={k} {ratios[k]:.2f}x" for k in (1, 5) if k in ratios]

    if not args.skip_study:
        shortened = derived_study(
            study, work, "bench_trial_study", {**changes, "search.num_trials": args.study_trials}
        )
        timings = work / "study_timings.jsonl"
        wall = run_study(shortened, timings)
        trials = trials_of(timings, rates)
        floors = sum(t.total_floor() for t in trials)
        slots = trials_at_once(cores, threads)
        print(
            f"\nthe study, {len(trials)} trials: wall {wall:.1f} s; trials' floors "
            f"{floors:.1f} s over {slots} trial(s) at a time ({cores} cores, {threads} "
            f"thread(s) a trial) = {floors / slots:.1f} s"
        )
        for t in trials:
            print(
                f"  trial {t.id}: K={t.k}, latent {t.latent}: wall {t.wall:.1f} s, "
                f"floor {t.total_floor():.1f} s, {t.ratio():.2f}x"
            )
        summary.append(f"study {wall / (floors / slots):.2f}x")
    print("\nbench_trial: " + " | ".join(summary))
    if not args.keep:
        print(f"(runs and timings in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
