"""The Pareto front: trials no other trial beats on every objective at once.

For rate and distortion (both minimised) the front is the empirical rate-distortion curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and strictly better on one."""
    better = False
    for x, y, mode in zip(a, b, modes, strict=True):
        if mode == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Points with a NaN or missing value are never on the front. Duplicates do not dominate
    each other, so equal points are all on the front together.
    """
    if any(m not in ("min", "max") for m in modes):
        raise ValueError(f"modes must be 'min' or 'max', got {list(modes)}")
    valid = [
        i
        for i, p in enumerate(points)
        if len(p) == len(modes) and all(v is not None and math.isfinite(v) for v in p)
    ]
    front = []
    for i in valid:
        if not any(dominates(points[j], points[i], modes) for j in valid if j != i):
            front.append(i)
    return front


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """Up to ``n`` of ``items`` (already in order), evenly spread from first to last."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]
