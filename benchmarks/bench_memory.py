"""The memory of a study on MNIST: the driver, each trial, and what a pack's members add.

Runs two small studies on the real MNIST (2 trials at once, 1 epoch, one CPU each) in this
process, which is the driver, and samples every 0.2 s the resident (RSS) and unique (USS:
Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup) memory of the driver and of every
Ray worker that runs a trial (its process title names the trainable). USS counts what a
process alone holds; RSS also counts pages shared with others (torch's libraries, Ray's object
store), so on one node the USS are what add up.

- one member per trial (search.replicates 1), then four (search.replicates 4: one pack of 4
  seeds per trial): the difference, over 3, is what each extra member of a pack adds;
- the dataset as it travels to the trials (Ray's object store): its bytes as read (uint8, one
  copy per node) against float32, as it travelled before.

Goals (issue "fused members"): at most 50 MB of unique memory per extra member; one uint8
copy of the dataset per node. Usage: VAE_STUDY_DATA=../shared/data python
benchmarks/bench_memory.py
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from pathlib import Path

import ray

from vae_study.config.study import study_from_dict
from vae_study.core.data import read_source
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, RESULTS_FILE
from vae_study.study.driver import run_study

TRIAL_TITLE = re.compile(r"ray::(ImplicitFunc|train_trial)")  # a Ray worker running a trial


def memory(pid: int | str) -> tuple[int, int]:
    """(RSS, USS) in bytes of a process, (0, 0) if it is gone."""
    rss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                kib = int(rest.split()[0]) * 1024 if rest.split() else 0
                if key == "Rss":
                    rss = kib
                elif key in ("Private_Clean", "Private_Dirty"):
                    uss += kib
    except (OSError, ValueError, IndexError):
        return 0, 0
    return rss, uss


def trial_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if TRIAL_TITLE.search(cmd):
            pids.append(int(entry))
    return pids


class Sampler:
    """Peak RSS and USS of the driver and of each trial process while a study runs."""

    def __init__(self) -> None:
        self.driver = (0, 0)
        self.trials: dict[int, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.driver = tuple(map(max, self.driver, memory("self")))  # type: ignore[assignment]
            for pid in trial_pids():
                self.trials[pid] = tuple(map(max, self.trials.get(pid, (0, 0)), memory(pid)))  # type: ignore[assignment]
            time.sleep(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def study(tmp: Path, replicates: int, root: str) -> dict:
    return {
        "name": f"memory_r{replicates}",
        "output": {"dir": str(tmp / "runs")},
        "data": {"root": root, "binarize": "dynamic"},
        "model": {"hidden": [400], "latent_dim": 20},
        "train": {"epochs": 1, "device": "cpu"},
        "eval": {"k": 10, "nll_examples": 200, "surgery_examples": 500, "val_k": 10},
        "search": {
            "algorithm": "random",
            "num_trials": 2,
            "max_concurrent": 2,
            "replicates": replicates,
            "space": {"train.beta": {"log_uniform": [0.5, 2.0]}},
        },
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "ray": {"dashboard": False},
        "report": {"enabled": False},
    }


def main() -> None:
    root = os.environ.get("VAE_STUDY_DATA")
    if not root:
        raise SystemExit("set VAE_STUDY_DATA to the folder with mnist/ (../shared/data)")
    source = read_source("mnist", root)
    splits = [s for s in (source.train, source.test, source.valid) if s is not None]
    stored = sum(s.x.numel() * s.x.element_size() for s in splits)
    as_float = sum(s.x.numel() * 4 for s in splits)
    print(
        f"MNIST as it travels to the trials: {stored / 2**20:.0f} MiB "
        f"({splits[0].x.dtype}, one copy per node in Ray's object store); "
        f"as float32 it was {as_float / 2**20:.0f} MiB ({as_float / stored:.1f}x)"
    )
    del source, splits
    tmp = Path(tempfile.mkdtemp(prefix="vae_study_memory_"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    peaks = {}
    for replicates in (1, 4):
        with Sampler() as sampler:
            folder = run_study(study_from_dict(study(tmp, replicates, root)), verbose=0)
        table = R.read_results(folder / RESULTS_FILE)
        assert (table["status"] == COMPLETED).all(), table["status"].tolist()
        trials = sorted(sampler.trials.values(), key=lambda m: -m[1])[:2]
        peaks[replicates] = trials
        print(
            f"\nsearch.replicates {replicates} ({replicates} member(s) a trial, 2 trials at "
            f"once): driver peak RSS {sampler.driver[0] / 2**30:.2f} GiB, USS "
            f"{sampler.driver[1] / 2**30:.2f} GiB"
        )
        for i, (rss, uss) in enumerate(trials):
            print(f"  trial {i}: peak RSS {rss / 2**30:.2f} GiB, USS {uss / 2**30:.2f} GiB")
    ray.shutdown()
    one = sum(u for _, u in peaks[1]) / len(peaks[1])
    four = sum(u for _, u in peaks[4]) / len(peaks[4])
    print(
        f"\nbench_memory: trial USS {one / 2**20:.0f} MiB with one member, "
        f"{four / 2**20:.0f} MiB with four: {(four - one) / 3 / 2**20:.1f} MiB per extra member "
        f"(goal <= 50 MB)"
    )


if __name__ == "__main__":
    main()
