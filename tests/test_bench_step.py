"""bench_step on a tiny study: every part of a step over the floor, parts that add up to the
step, and the summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from study_factory import tiny_study, write_study

ROOT = Path(__file__).resolve().parents[1]


def test_bench_step_prints_each_part_over_the_floor_and_the_summary_line(tmp_path):
    path = write_study(tmp_path, tiny_study(tmp_path))  # 5 batches an epoch: steps span epochs
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--study", str(path)]
        + ["--base", '{"model.latent_dim": 2}', "--steps", "12", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    summary = re.search(
        r"^bench_step: K=1 (\S+)x, unavoidable (\S+)x \| K=5 (\S+)x, unavoidable (\S+)x$",
        text,
        re.M,
    )
    assert summary, text
    assert all(float(r) > 0 for r in summary.groups())

    # Each figure is printed to 0.01 ms: a sum of n printed parts is within 0.005 (n + 1) of
    # the printed total.
    def near(total: float, parts: list[float]) -> bool:
        return abs(sum(parts) - total) <= 0.005 * (len(parts) + 1) + 1e-9

    for block in text.split("\nK=")[1:]:
        ms = {
            m[1].strip(): float(m[2])
            for m in re.finditer(r"^  (.+?)\s+([\d.]+)\s+[\d.]+x$", block, re.M)
        }
        parts = [ms[p] for p in ("batch", "forward", "backward", "adam")]
        assert near(ms["the step"], parts), block  # the parts are the step
        unavoidable = [ms["the products alone"], ms["adam"], ms["batch"]]
        assert near(ms["the products, Adam and the batch"], unavoidable), block
        assert ms["the likelihood and its gradient alone"] > 0
    assert "K=1, latent 2, batch 100" in text and "K=5, latent 2, batch 100" in text
    flops = [float(f) for f in re.findall(r"batch 100: (\S+) MFLOP", text)]
    assert len(flops) == 2 and flops[1] > 2 * flops[0]  # K=5 decodes five samples
