"""The data of the knob plots: one searched knob against a metric, compared only among trials
that match on every other searched knob (continuous keys binned), with the number of trials
behind each point. Pure functions of ``Trial`` objects, so tests check the data, not pixels;
``plots.knobs`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics as M
from .search_config import Param
from .study_folder import Trial

# ---- Knob plots: one knob against a metric, only among trials that match on the others ----

KNOB_NAMES = {
    "train.beta": "beta",
    "model.latent_dim": "latent size",
    "train.k": "K",
    "train.objective": "training objective",
}
# A continuous searched key (uniform, log_uniform, a wide int range) is matched in this many
# bins over its search range (log-spaced for log scales) when another knob is plotted.
CONTINUOUS_BINS = 4
NO_MATCH = "no matched trials"


def knob_name(key: str) -> str:
    return KNOB_NAMES.get(key, key)


@dataclass(frozen=True)
class KnobPoint:
    """One knob value of a series: the mean of ``metric`` over the ``n`` trials (or
    configurations) behind it, each itself a mean over its seeds.

    ``se``: the standard error of that mean over the seeds, sqrt(sum se_i^2) / n from the
    configurations' own standard errors (the seed noise of an average of independent means;
    the spread between configurations is not seed noise and is not in it); None when a
    configuration behind the point has no standard error (one seed). ``n_seeds``: the
    finished seeds behind the point, all configurations together."""

    x: Any
    mean: float
    n: int
    trial_ids: tuple[str, ...]
    se: float | None = None
    n_seeds: int = 1


def _point(x: Any, entries: list[tuple[Trial, float]], metric: str) -> KnobPoint:
    """The point of the trials (configurations) ``entries`` = (trial, its value) at ``x``."""
    errors = [t.error(metric) for t, _ in entries]
    se = (
        math.sqrt(sum(e * e for e in errors)) / len(errors)  # type: ignore[operator]
        if all(e is not None for e in errors)
        else None
    )
    return KnobPoint(
        x,
        float(np.mean([v for _, v in entries])),
        len(entries),
        tuple(t.trial_id for t, _ in entries),
        se,
        sum(t.n_seeds for t, _ in entries),
    )


@dataclass(frozen=True)
class KnobSeries:
    """Trials that share every other searched knob (continuous ones by bin): one line."""

    fixed: tuple[tuple[str, str], ...]  # (key, its value or bin), one per other searched knob
    points: tuple[KnobPoint, ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{knob_name(k)} {v}" for k, v in self.fixed) or "all trials"


@dataclass(frozen=True)
class KnobPanel:
    """One panel of the knob figure: its series, or the text drawn instead of lines."""

    knob: str
    metric: str
    ylabel: str
    title: str
    series: tuple[KnobSeries, ...]
    message: str | None  # None when there is something to draw


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


def bin_edges(param: Param) -> list[float] | None:
    """The bin edges a continuous searched key is matched in; None: matched exactly."""
    if param.kind == "choice":
        return None
    if param.kind == "int" and param.high - param.low + 1 <= 2 * CONTINUOUS_BINS:
        return None  # a few integers: each value is its own level
    if param.kind == "log_uniform" or param.log:
        return np.geomspace(param.low, param.high, CONTINUOUS_BINS + 1).tolist()
    return np.linspace(param.low, param.high, CONTINUOUS_BINS + 1).tolist()


def _level(param: Param, value: Any) -> tuple[Any, str]:
    """(sort key, label) of the level of ``value``: itself, or the bin it falls in."""
    edges = bin_edges(param)
    value = _plain(value)
    if edges is None or not isinstance(value, int | float):
        return _sort_key(value), str(value)
    i = int(np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2))
    close = "]" if i == len(edges) - 2 else ")"
    return (0, i), f"in [{edges[i]:.3g}, {edges[i + 1]:.3g}{close}"


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


def matching_text(searched: Sequence[Param]) -> str:
    """How the knob plots match trials on the searched keys, in words (bins named); empty
    when only one key is searched (nothing to match on)."""
    if len(searched) < 2:
        return ""
    exact = [knob_name(p.key) for p in searched if bin_edges(p) is None]
    parts = [" and ".join(exact) + " by exact value"] if exact else []
    for p in searched:
        edges = bin_edges(p)
        if edges is not None:
            scale = "log-spaced" if p.kind == "log_uniform" or p.log else "equal-width"
            parts.append(
                f"{knob_name(p.key)} in {CONTINUOUS_BINS} {scale} bins (edges "
                + ", ".join(f"{e:.3g}" for e in edges)
                + ")"
            )
    return "; ".join(parts)


def knob_series(
    trials: Sequence[Trial], knob: str, metric: str, searched: Sequence[Param]
) -> list[KnobSeries]:
    """``metric`` against ``knob`` among finished trials, one series per setting of the other
    searched knobs (continuous ones binned, see ``bin_edges``): a series never mixes
    values of another knob. A series needs two values of ``knob``; points are means over
    the trials sharing a knob value, with their number ``n``, and (configurations of a
    replicated study) the standard error over seeds and the seeds behind it."""
    others = [p for p in searched if p.key != knob]
    groups: dict[tuple[tuple[str, str], ...], dict[Any, list[tuple[Trial, float]]]] = {}
    order: dict[tuple[tuple[str, str], ...], tuple[Any, ...]] = {}
    for t in trials:
        value = t.value(metric)
        if (
            not t.finished
            or t.params.get(knob) is None
            or not math.isfinite(value)
            or any(t.params.get(p.key) is None for p in others)
        ):
            continue
        levels = [_level(p, t.params[p.key]) for p in others]
        fixed = tuple((p.key, label) for p, (_, label) in zip(others, levels, strict=True))
        order[fixed] = tuple(key for key, _ in levels)
        groups.setdefault(fixed, {}).setdefault(_plain(t.params[knob]), []).append((t, value))
    out = []
    for fixed in sorted(groups, key=lambda f: order[f]):
        by_x = groups[fixed]
        if len(by_x) < 2:
            continue
        out.append(
            KnobSeries(
                fixed,
                tuple(_point(x, by_x[x], metric) for x in sorted(by_x, key=_sort_key)),
            )
        )
    return out


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
        for metric, ylabel in KNOB_METRICS[p.key]:
            if metric == "bound":
                metric, ylabel = M.bound_key("test", quantity), f"{bound_label(quantity)} [nats]"
            series = knob_series(trials, p.key, metric, searched)
            message = None
            if not series:
                reported = [t for t in trials if t.finished and math.isfinite(t.value(metric))]
                others = [knob_name(o.key) for o in searched if o.key != p.key]
                message = (
                    f"no finished trial reports {metric} yet"
                    if not reported
                    else f"{NO_MATCH}: no two finished trials differ in {knob_name(p.key)}"
                    + (f"\nwith the same {', '.join(others)}" if others else "")
                )
            panels.append(
                KnobPanel(
                    p.key,
                    metric,
                    ylabel,
                    f"{knob_name(p.key)} against {ylabel.split(' [')[0]}",
                    tuple(series),
                    message,
                )
            )
    return panels
