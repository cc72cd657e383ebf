"""How the knob plots match trials: a knob is compared only among trials at one setting of
every other searched key (a "cell"), and the knobs' names in figures and tables.

Matching. A choice, or an int range of at most ``EXACT_INT_LEVELS`` values, is matched by
exact value. A continuous key (uniform, log_uniform, a wide int range) is matched exactly on
a value two or more of the finished trials share (a grid or ``points_to_evaluate`` point),
and otherwise in bins over its search range: log-spaced bins no wider than a factor
``MAX_BIN_FACTOR`` on a log scale, ``LINEAR_BINS`` equal-width bins on a linear one. A cell
with a single level of the knob draws no line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_study.config.space import Param
from vae_study.records.trial import Trial

KNOB_NAMES = {
    "train.beta": "beta",
    "model.latent_dim": "latent size",
    "train.k": "K",
    "train.objective": "training objective",
}
MAX_BIN_FACTOR = 1.5  # a log-scale bin's high edge over its low edge, at most
LINEAR_BINS = 10  # bins of a linear-scale continuous key over its search range
EXACT_INT_LEVELS = 8  # an int range of at most this many values: each value its own level


def knob_name(key: str) -> str:
    """A searched key's name in figures and tables (``train.beta`` -> ``beta``)."""
    return KNOB_NAMES.get(key, key)


def _plain(value: Any) -> Any:
    """A parameter as read from results.csv (2.0 for 2, a list as text) -> a hashable value."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def sort_key(value: Any) -> tuple[int, Any]:
    """The order of a knob's values: numbers by value, then anything else as text."""
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
        return sort_key(value), str(value)
    if value in repeated or not edges[0] <= value <= edges[-1]:
        return (0, float(value), 0), _value_label(value)
    i = int(np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2))
    close = "]" if i == len(edges) - 2 else ")"
    return (0, edges[i], 1), f"in [{edges[i]:.3g}, {edges[i + 1]:.3g}{close}"


def match_words(params: Sequence[Param]) -> str:
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
    return match_words(searched) if len(searched) >= 2 else ""


Cell = tuple[tuple[str, str], ...]  # (key, its value or bin label), one per other searched key


def matched_cells(
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
