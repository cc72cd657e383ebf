"""Paired statistics over seeds: a contrast between two settings from per-seed differences.

Replicate r of every configuration trains with the same seed (``train.seed + r``; the
confirmation's with ``train.seed + search.replicates + r``), so two configurations are
paired by seed: the difference of their numbers at one seed cancels what the seed shares
(its initial weights' stream, batch order, noise). A contrast "b minus a" is

- per seed s: d_s = metric(b, seed s) - metric(a, seed s), where a side of several
  configurations (a knob level in a matched cell) is their mean at seed s;
- over several cells that each hold both sides (matched settings of the other knobs): each
  seed's differences averaged over the cells, equal weight per cell (the same seeds are in
  every cell, so the seeds stay the independent units);
- its mean, mean(d); its standard error, std(d, ddof=1) / sqrt(n); its 95% interval
  mean +- t_{0.975, n-1} * se; n the seeds paired. With n < 2 there is no contrast.

Only completed configurations (every replicate finished) enter: one without all its seeds
has no mean, and its survivors are never paired. No torch, Ray or pandas here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vae_study.records.replicates import REPLICATE_KEY, SEED_KEY
from vae_study.records.trial import Trial

CONFIDENCE = 0.95  # of every interval a contrast states


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (a positive integer) degrees of freedom: the
    closed forms of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        if df > 1:
            total = term
            for j in range(3, df - 1, 2):  # (2*4...(j-1)) / (1*3...j) cos^j
                term *= c2 * (j - 1) / j
                total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 1.0
    for j in range(2, df - 1, 2):  # (1*3...(j-1)) / (2*4...j) cos^j
        term *= c2 * (j - 1) / j
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` >= 1 (an integer) degrees
    of freedom, e.g. t_{0.975, 2} = 4.303: the root of the exact CDF, by bisection to 1e-12.
    """
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    if isinstance(df, bool) or int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df}")
    df, target = int(df), 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Contrast:
    """b minus a from ``n`` per-seed paired differences (see the module's contract)."""

    mean: float
    se: float
    low: float  # the 95% t interval: mean -+ t_{0.975, n-1} * se
    high: float
    n: int  # seeds paired
    cells: int = 1  # matched cells whose differences were averaged per seed


def contrast(differences: Sequence[float], *, cells: int = 1) -> Contrast | None:
    """The contrast of per-seed ``differences`` (one per seed); None with fewer than two."""
    d = [float(x) for x in differences]
    n = len(d)
    if n < 2 or not all(math.isfinite(x) for x in d):
        return None
    mean = math.fsum(d) / n
    se = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1) / n)
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * se
    return Contrast(mean, se, mean - half, mean + half, n, cells)


def seed_values(config: Trial, metric: str) -> dict[int, float]:
    """Seed -> ``metric`` of a completed configuration's members (the replicate where a row
    has no seed); empty for a configuration that is not completed, or has no members."""
    if not config.finished:
        return {}
    out: dict[int, float] = {}
    for m in config.members:
        value = m.value(metric)
        seed = m.value(SEED_KEY)
        seed = seed if math.isfinite(seed) else m.value(REPLICATE_KEY)
        if m.finished and math.isfinite(value) and math.isfinite(seed):
            out[int(seed)] = value
    return out


def level_by_seed(configs: Sequence[Trial], metric: str) -> dict[int, float]:
    """Seed -> the mean of ``metric`` over ``configs`` at that seed, for the seeds every one
    of them has (empty if any is not completed)."""
    per = [seed_values(c, metric) for c in configs]
    if not per or not all(per):
        return {}
    seeds = set.intersection(*(set(p) for p in per))
    return {s: math.fsum(p[s] for p in per) / len(per) for s in sorted(seeds)}


def paired_contrast(
    cells: Sequence[tuple[Sequence[Trial], Sequence[Trial]]], metric: str
) -> Contrast | None:
    """b minus a over ``cells`` of (configurations at a, configurations at b): per seed, the
    difference of the two sides' per-seed means in each cell, averaged over the cells that
    pair at least two seeds, for the seeds all those cells share. None with fewer than two
    such seeds."""
    per_cell = []
    for a, b in cells:
        la, lb = level_by_seed(a, metric), level_by_seed(b, metric)
        d = {s: lb[s] - la[s] for s in la.keys() & lb.keys()}
        if len(d) >= 2:
            per_cell.append(d)
    if not per_cell:
        return None
    seeds = sorted(set.intersection(*(set(d) for d in per_cell)))
    return contrast(
        [math.fsum(d[s] for d in per_cell) / len(per_cell) for s in seeds], cells=len(per_cell)
    )


@dataclass(frozen=True)
class Difference:
    """One row of a differences table: ``metric`` at ``b`` minus at ``a`` (levels of
    ``knob``, or configurations of the confirmation with ``knob`` = "configuration")."""

    knob: str
    metric: str
    a: str
    b: str
    contrast: Contrast


def configuration_differences(configs: Sequence[Trial], metric: str) -> list[Difference]:
    """Every pair of completed ``configs`` (b after a, in the given order) as a contrast of
    ``metric`` paired by seed, each configuration its own level; pairs without two shared
    seeds are left out."""
    done = [c for c in configs if c.finished]
    out = []
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            c = paired_contrast([([a], [b])], metric)
            if c is not None:
                out.append(Difference("configuration", metric, a.trial_id, b.trial_id, c))
    return out
