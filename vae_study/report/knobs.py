"""The data of the knob plots: one searched knob against a metric, compared only among trials
that match on every other searched knob (``knob_matching``), with the number of trials behind
each point and, where seeds are paired, each point's difference from its line's first point
paired by seed (``paired``). Pure functions of ``Trial`` objects, so tests check the data,
not pixels; ``knob_plots.knobs`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_study import metrics as M
from vae_study.config.space import Param
from vae_study.records.trial import Trial
from vae_study.report.knob_matching import (
    bin_edges,
    knob_name,
    match_words,
    matched_cells,
    sort_key,
)
from vae_study.report.paired import Contrast, Difference, paired_contrast

NO_MATCH = "no matched trials"
NO_PAIRS = "one seed per configuration: nothing to pair, no bars"


@dataclass(frozen=True)
class KnobPoint:
    """One knob value of a series: the mean of ``metric`` over the ``n`` trials (or
    configurations) behind it, each itself a mean over its seeds; ``n_seeds`` the finished
    seeds behind it, all configurations together.

    ``contrast``: this point minus its series' first point (the reference), paired by seed
    in the series' cell (``paired.paired_contrast``; a side of several configurations is
    their per-seed mean). None for the reference itself, and where fewer than two seeds
    pair (one seed per configuration: nothing to pair)."""

    x: Any
    mean: float
    n: int
    trial_ids: tuple[str, ...]
    n_seeds: int = 1
    contrast: Contrast | None = None


@dataclass(frozen=True)
class KnobSeries:
    """Trials that share every other searched knob (one cell, see ``knob_matching``): one
    line. Its first point is the reference of the others' contrasts."""

    fixed: tuple[tuple[str, str], ...]  # (key, its value or bin), one per other searched knob
    points: tuple[KnobPoint, ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{knob_name(k)} {v}" for k, v in self.fixed) or "all trials"


@dataclass(frozen=True)
class KnobPanel:
    """One panel of the knob figure: its series, or the text drawn instead of lines;
    ``note`` says how its lines were matched and what its bars are."""

    knob: str
    metric: str
    ylabel: str
    title: str
    series: tuple[KnobSeries, ...]
    message: str | None  # None when there is something to draw
    note: str = ""


# knob -> (metric, y label) of its two panels; the bound's entry is filled in by quantity.
KNOB_METRICS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "train.beta": (
        (M.TEST_RATE, "test rate R [nats]"),
        (M.TEST_DISTORTION, "test distortion D [nats]"),
    ),
    "train.k": (("bound", "bound"), (M.TEST_BOUND_GAP, "test -ELBO - bound, same examples [nats]")),
    "model.latent_dim": (
        (M.TEST_RATE, "test rate R [nats]"),
        (M.TEST_ACTIVE_UNITS, "test active units"),
    ),
}


def varied_knobs(searched: Sequence[Param]) -> list[Param]:
    """The searched keys the knob figure has panels for, in its column order."""
    by_key = {p.key: p for p in searched if p.kind != "choice" or len(set(p.values)) > 1}
    return [by_key[k] for k in KNOB_METRICS if k in by_key]


def _point(
    x: Any, entries: list[tuple[Trial, float]], metric: str, reference: list[Trial] | None
) -> KnobPoint:
    """The point of the trials (configurations) ``entries`` = (trial, its value) at ``x``,
    with its contrast against the ``reference`` level's trials (None: it is the reference)."""
    trials = [t for t, _ in entries]
    return KnobPoint(
        x,
        float(np.mean([v for _, v in entries])),
        len(entries),
        tuple(t.trial_id for t in trials),
        sum(t.n_seeds for t in trials),
        None if reference is None else paired_contrast([(reference, trials)], metric),
    )


def knob_series(
    trials: Sequence[Trial], knob: str, metric: str, searched: Sequence[Param]
) -> list[KnobSeries]:
    """``metric`` against ``knob`` among finished trials, one series per cell (matched
    settings of the other searched keys, see ``knob_matching``): a series never mixes values
    of another knob, nor a continuous one across more than a bin. A series needs two values
    of ``knob``; points are means over the trials sharing a knob value, with their number
    ``n``, the seeds behind them, and (seeds paired) their contrast with the first point."""
    out = []
    for fixed, by_x in matched_cells(trials, knob, metric, searched):
        if len(by_x) < 2:
            continue
        xs = sorted(by_x, key=sort_key)
        reference = [t for t, _ in by_x[xs[0]]]
        points = [_point(xs[0], by_x[xs[0]], metric, None)]
        points += [_point(x, by_x[x], metric, reference) for x in xs[1:]]
        out.append(KnobSeries(fixed, tuple(points)))
    return out


def _panel_metrics(knob: str, quantity: str) -> list[tuple[str, str]]:
    """(metric, y label) of the knob's two panels, the bound named by ``quantity``."""
    out = []
    for metric, ylabel in KNOB_METRICS[knob]:
        if metric == "bound":
            metric, ylabel = M.bound_key("test", quantity), f"{bound_label(quantity)} [nats]"
        out.append((metric, ylabel))
    return out


def knob_differences(
    trials: Sequence[Trial], searched: Sequence[Param], quantity: str
) -> list[Difference]:
    """The differences table of the search: for each varied knob with discrete levels (a
    choice or a few integers; a continuous knob's effect is its plot) and each metric of its
    panels, every pair of its levels a < b as ``metric(b) - metric(a)``, paired by seed over
    the cells (matched settings of the other searched keys) that hold both: per seed, the
    difference of the levels' per-seed means in each cell, averaged over the cells
    (``paired.paired_contrast``). Pairs no cell pairs two seeds for are left out."""
    out = []
    for p in varied_knobs(searched):
        if bin_edges(p) is not None:
            continue
        for metric, _ in _panel_metrics(p.key, quantity):
            cells = [by_x for _, by_x in matched_cells(trials, p.key, metric, searched)]
            levels = sorted({x for by_x in cells for x in by_x}, key=sort_key)
            for i, a in enumerate(levels):
                for b in levels[i + 1 :]:
                    pairs = [
                        ([t for t, _ in by_x[a]], [t for t, _ in by_x[b]])
                        for by_x in cells
                        if a in by_x and b in by_x
                    ]
                    c = paired_contrast(pairs, metric)
                    if c is not None:
                        out.append(Difference(p.key, metric, str(a), str(b), c))
    return out


def _bars_words(series: Sequence[KnobSeries], trials: Sequence[Trial]) -> str:
    """What a panel's error bars are (or why it has none)."""
    ns = sorted({pt.contrast.n for s in series for pt in s.points if pt.contrast is not None})
    if ns:
        return (
            "bars: +- the standard error of each point minus the first point of its line, "
            f"from per-seed paired differences (n = {', '.join(map(str, ns))} seeds); the "
            "first point is the reference and has none"
        )
    if not any(t.n_replicates > 1 for t in trials):
        return NO_PAIRS
    return "no point pairs two seeds with its line's first point: no bars"


def bound_label(quantity: str) -> str:
    """The bound -L_K in words: an NLL, or a cross-entropy bound that is not a likelihood."""
    if quantity == M.QUANTITY_NLL:
        return "test NLL = -L_K"
    return "test cross-entropy bound -L_K (not a likelihood)"


def knob_panels(
    trials: Sequence[Trial], searched: Sequence[Param], quantity: str
) -> list[KnobPanel]:
    """The panels of the knob figure, two per varied knob (none for a knob not searched)."""
    panels = []
    for p in varied_knobs(searched):
        others = [o for o in searched if o.key != p.key]
        matched = (
            f"lines matched on {match_words(others)}" if others else "one knob searched: one line"
        )
        for metric, ylabel in _panel_metrics(p.key, quantity):
            series = knob_series(trials, p.key, metric, searched)
            message = None
            if not series:
                reported = [t for t in trials if t.finished and math.isfinite(t.value(metric))]
                names = [knob_name(o.key) for o in others]
                message = (
                    f"no finished trial reports {metric} yet"
                    if not reported
                    else f"{NO_MATCH}: no two finished trials differ in {knob_name(p.key)}"
                    + (f"\nwith the same {', '.join(names)}" if names else "")
                )
            panels.append(
                KnobPanel(
                    p.key,
                    metric,
                    ylabel,
                    f"{knob_name(p.key)} against {ylabel.split(' [')[0]}",
                    tuple(series),
                    message,
                    f"{matched}; {_bars_words(series, trials)}",
                )
            )
    return panels
