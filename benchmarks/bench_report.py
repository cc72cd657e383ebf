"""Time to build the report of a 100-trial study (issue 4: well under a minute on 2 cores).

The study folder is made by hand as ``vae_study run`` leaves it (tests/study_factory.py):
100 trials over beta and latent size with 20-epoch histories, 5 of them trained for real so
the report draws model pictures; a tiny MNIST-format dataset in a temporary folder.
Usage: python benchmarks/bench_report.py [--trials 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import write_mnist  # noqa: E402
from study_factory import make_study_folder  # noqa: E402
from vae_study.records.layout import COMPLETED, FAILED, STOPPED
from vae_study.report.page import build_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vae_study_report_"))
    root = write_mnist(tmp / "data", n_train=2000, n_test=2000)
    statuses = [COMPLETED] * 8 + [STOPPED, FAILED]
    folder = make_study_folder(
        tmp, root, n_trials=args.trials, epochs=20, checkpoints=5, statuses=statuses, offset=1000.0
    )
    t0 = time.perf_counter()
    out = build_report(folder, tmp / "report")
    seconds = time.perf_counter() - t0
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"figures: {', '.join(pngs)}")
    print(
        f"report of {args.trials} trials ({len(pngs)} figures) built in {seconds:.1f} s on "
        f"{os.cpu_count()} CPUs  (goal: well under 60 s)"
    )


if __name__ == "__main__":
    main()
