"""The data of the knob plots: one searched knob against a metric, compared only among trials
that match on every other searched knob, with the number of trials behind each point and,
where seeds are paired, each point's difference from its line's first point paired by seed
(``paired``). Pure functions of ``Trial`` objects, so tests check the data, not pixels;
``plots.knobs`` draws it.

Matching (a "cell": one setting of the other searched keys). A choice, or an int range of at
most ``EXACT_INT_LEVELS`` values, is matched by exact value. A continuous key (uniform,
log_uniform, a wide int range) is matched exactly on a value two or more of the finished
trials share (a grid or ``points_to_evaluate`` point), and otherwise in bins over its search
range: log-spaced bins no wider than a factor ``MAX_BIN_FACTOR`` on a log scale,
``LINEAR_BINS`` equal-width bins on a linear one. A cell with a single level of the knob
draws no line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_study import metrics as M
from vae_study.config.search import Param
from vae_study.records.folder import Trial
from vae_study.report.paired import Contrast, Difference, paired_contrast

# ---- Knob plots: one knob against a metric, only among trials that match on the others ----

KNOB_NAMES = {
    "train.beta": "beta",
    "model.latent_dim": "latent size",
    "train.k": "K",
    "train.objective": "training objective",
}
MAX_BIN_FACTOR = 1.5  # a log-scale bin's high edge over its low edge, at most
LINEAR_BINS = 10  # bins of a linear-scale continuous key over its search range
EXACT_INT_LEVELS = 8  # an int range of at most this many values: each value its own level
NO_MATCH = "no matched trials"
NO_PAIRS = "one seed per configuration: nothing to pair, no bars"


def knob_name(key: str) -> str:
    return KNOB_NAMES.get(key, key)


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
    """Trials that share every other searched knob (one cell, see the module): one line.
    Its first point is the reference of the others' contrasts."""

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


def _plain(value: Any) -> Any:
    """A parameter as read from results.csv (2.0 for 2, a list as text) -> a hashable value."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _log_scale(param: Param) -> bool:
    return param.kind == "log_uniform" or param.log


def bin_edges(param: Param) -> list[float] | None:
    """The bin edges a continuous searched key is matched in (each bin at most
    ``MAX_BIN_FACTOR`` wide on a log scale, ``LINEAR_BINS`` equal bins on a linear one);
    None: matched by exact value (a choice, a few integers)."""
    if param.kind == "choice":
        return None
    if param.kind == "int" and param.high - param.low + 1 <= EXACT_INT_LEVELS:
        return None  # a few integers: each value is its own level
    if _log_scale(param):
        ratio = math.log(param.high / param.low) / math.log(MAX_BIN_FACTOR)
        n = max(1, math.ceil(ratio - 1e-9))
        return np.geomspace(param.low, param.high, n + 1).tolist()
    return np.linspace(param.low, param.high, LINEAR_BINS + 1).tolist()


def repeated_values(trials: Sequence[Trial], param: Param) -> frozenset[Any]:
    """The values of a continuous key that two or more finished ``trials`` share (a grid or
    ``points_to_evaluate`` point): matched exactly. Empty for a key matched exactly anyway."""
    if bin_edges(param) is None:
        return frozenset()
    counts: dict[Any, int] = {}
    for t in trials:
        value = _plain(t.params.get(param.key))
        if t.finished and isinstance(value, int | float):
            counts[value] = counts.get(value, 0) + 1
    return frozenset(v for v, n in counts.items() if n >= 2)


def _value_label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _level(param: Param, value: Any, repeated: frozenset[Any] = frozenset()) -> tuple[Any, str]:
    """(sort key, label) of the level of ``value``: itself (a key matched exactly, a value in
    ``repeated``, a value outside the search range), or the bin it falls in."""
    edges = bin_edges(param)
    value = _plain(value)
    if edges is None or not isinstance(value, int | float):
        return _sort_key(value), str(value)
    if value in repeated or not edges[0] <= value <= edges[-1]:
        return (0, float(value), 0), _value_label(value)
    i = int(np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2))
    close = "]" if i == len(edges) - 2 else ")"
    return (0, edges[i], 1), f"in [{edges[i]:.3g}, {edges[i + 1]:.3g}{close}"


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


def _match_words(params: Sequence[Param]) -> str:
    """How ``params`` are matched, in words (the bins named); empty for no params."""
    exact = [knob_name(p.key) for p in params if bin_edges(p) is None]
    parts = [" and ".join(exact) + " by exact value"] if exact else []
    for p in params:
        edges = bin_edges(p)
        if edges is None:
            continue
        span = f"from {edges[0]:.3g} to {edges[-1]:.3g}"
        if _log_scale(p):
            parts.append(
                f"{knob_name(p.key)} in log-spaced bins of at most {MAX_BIN_FACTOR:g}x "
                f"({len(edges) - 1} bins of {edges[1] / edges[0]:.3g}x {span})"
            )
        else:
            parts.append(
                f"{knob_name(p.key)} in {len(edges) - 1} equal-width bins of "
                f"{edges[1] - edges[0]:.3g} {span}"
            )
    if any(bin_edges(p) is not None for p in params):
        parts.append(
            "a value of a binned key that several finished trials share (a grid or "
            "points_to_evaluate point) by exact value"
        )
    return "; ".join(parts)


def matching_text(searched: Sequence[Param]) -> str:
    """How the knob plots match trials on the searched keys, in words (bins named); empty
    when only one key is searched (nothing to match on)."""
    return _match_words(searched) if len(searched) >= 2 else ""


Cell = tuple[tuple[str, str], ...]  # (key, its value or bin label), one per other searched key


def _cells(
    trials: Sequence[Trial], knob: str, metric: str, searched: Sequence[Param]
) -> list[tuple[Cell, dict[Any, list[tuple[Trial, float]]]]]:
    """The finished trials with a finite ``metric``, by cell (matched settings of the other
    searched keys) and knob value, cells in order of their settings."""
    others = [p for p in searched if p.key != knob]
    repeated = {p.key: repeated_values(trials, p) for p in others}
    groups: dict[Cell, dict[Any, list[tuple[Trial, float]]]] = {}
    order: dict[Cell, tuple[Any, ...]] = {}
    for t in trials:
        value = t.value(metric)
        if (
            not t.finished
            or t.params.get(knob) is None
            or not math.isfinite(value)
            or any(t.params.get(p.key) is None for p in others)
        ):
            continue
        levels = [_level(p, t.params[p.key], repeated[p.key]) for p in others]
        fixed = tuple((p.key, label) for p, (_, label) in zip(others, levels, strict=True))
        order[fixed] = tuple(key for key, _ in levels)
        groups.setdefault(fixed, {}).setdefault(_plain(t.params[knob]), []).append((t, value))
    return [(fixed, groups[fixed]) for fixed in sorted(groups, key=lambda f: order[f])]


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
    settings of the other searched keys, see the module): a series never mixes values of
    another knob, nor a continuous one across more than a bin. A series needs two values of
    ``knob``; points are means over the trials sharing a knob value, with their number
    ``n``, the seeds behind them, and (seeds paired) their contrast with the first point."""
    out = []
    for fixed, by_x in _cells(trials, knob, metric, searched):
        if len(by_x) < 2:
            continue
        xs = sorted(by_x, key=_sort_key)
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
            cells = [by_x for _, by_x in _cells(trials, p.key, metric, searched)]
            levels = sorted({x for by_x in cells for x in by_x}, key=_sort_key)
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
            f"lines matched on {_match_words(others)}" if others else "one knob searched: one line"
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
