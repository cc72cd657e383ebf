"""What a study selects on: ``search.objectives`` (the metrics Optuna optimises, each with
its direction) and ``search.confirm``, the last stage, which retrains the best configurations
on validation with fresh seeds and quotes their test numbers."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vae_study import metrics as M
from vae_study.config.messages import did_you_mean, show
from vae_study.config.run import RunConfig
from vae_study.config.schema import Section, rule
from vae_study.errors import ConfigError

# Counts of the confirmation stage (configurations, seeds) beyond which a study is a typo.
MAX_CONFIRM = 10**4


@dataclass(frozen=True)
class Objective:
    """One metric the search optimises, and whether lower (min) or higher (max) is better."""

    metric: str
    mode: Literal["min", "max"]


@dataclass(frozen=True)
class ConfirmConfig(Section):
    """``search.confirm: {top: N, replicates: R}``: the last stage of a study. Once the search
    has finished, its N best configurations on validation are trained again with R fresh
    seeds (none used in the search) and the report quotes their test mean +- standard error.
    """

    SECTION: ClassVar[str] = "search.confirm"

    # Configurations confirmed: the best N on the validation objective(s).
    top: int = rule(
        1,
        ge=1,
        le=MAX_CONFIRM,
        expected=f"the number of best configurations to confirm, an integer in [1, {MAX_CONFIRM}]",
    )
    # Fresh seeds per confirmed configuration.
    replicates: int = rule(
        3,
        ge=2,
        le=MAX_CONFIRM,
        expected=f"an integer in [2, {MAX_CONFIRM}]: a confirmation with one seed has no error "
        "bar (no standard error); use 2 or more, or drop search.confirm",
    )


def check_confirm(
    confirm: ConfirmConfig | None, objectives: tuple[Objective, ...], num_trials: int
) -> None:
    """A confirmation selects on validation and quotes test: a study that selects on test
    has nothing left to confirm on, and it cannot confirm more configurations than it
    searched (``num_trials``)."""
    if confirm is None:
        return
    on_test = [o.metric for o in objectives if M.is_test_metric(o.metric)]
    if on_test:
        raise ConfigError(
            f"search.confirm: the study selects on {', '.join(on_test)}, a test metric; a "
            "confirmation selects on validation and quotes test, so its test numbers would be "
            "biased: select on a validation metric (search.objectives), or drop search.confirm"
        )
    if confirm.top > num_trials:
        raise ConfigError(
            f"search.confirm.top: got {confirm.top}, more configurations than the search "
            f"tries (search.num_trials={num_trials}); use top <= num_trials"
        )


def check_objectives(
    objectives: tuple[Objective, ...], base: RunConfig, *, select_on_test: bool
) -> None:
    """The objectives are computed for ``base`` and, unless the study says so
    (``select_on_test``), not on test."""
    available = _available_metrics(base)
    for o in objectives:
        if o.metric not in available:
            raise ConfigError(
                f"search.objectives: {o.metric} is not computed for this study's model and data "
                f"({M.QUANTITY_WORDS[base.quantity]}); use one of "
                + ", ".join(m for m in M.DIRECTIONS if m in available)
            )
    on_test = [o.metric for o in objectives if M.is_test_metric(o.metric)]
    if on_test and not select_on_test:
        raise ConfigError(
            f"search.objectives: {', '.join(on_test)} is a test metric, and a search that "
            "selects on the test split biases every test number it reports; select on "
            f"validation ({M.bound_key('val', base.quantity)}, val/rate, val/distortion, "
            "val/neg_elbo), or set search.select_on_test: true to do it anyway"
        )
    if on_test:
        warnings.warn(
            f"search.select_on_test: the study selects on {', '.join(on_test)}; its "
            "test numbers are optimistically biased and are not held-out estimates",
            stacklevel=2,
        )


def _available_metrics(base: RunConfig) -> set[str]:
    """The metrics a trial of ``base`` reports: the bound under its honest name only."""
    out = set(M.DIRECTIONS)
    for split in ("val", "test"):
        other = M.QUANTITY_CROSS_ENTROPY if base.quantity == M.QUANTITY_NLL else M.QUANTITY_NLL
        out.discard(M.bound_key(split, other))
        if not base.dequantized:
            out.discard(f"{split}/bpd")
    return out


def objectives_from(raw: Any, base: RunConfig) -> tuple[Objective, ...]:
    """``search.objectives`` as Objectives: a metric name, a list of names or of
    ``{metric, mode}``, a mapping metric: mode; None: the validation bound of ``base``."""
    if raw is None:
        return (Objective(M.bound_key("val", base.quantity), "min"),)
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, Mapping):
        raw = [{"metric": k, "mode": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "search.objectives: expected a metric name or a list of "
            "{metric: ..., mode: min|max}, such as [{metric: test/rate, mode: "
            f"min}}, {{metric: test/distortion, mode: min}}]; got {show(raw)}"
        )
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, Mapping) or set(item) - {"metric", "mode"} or "metric" not in item:
            raise ConfigError(
                f"search.objectives: expected {{metric: NAME, mode: min|max}}, got {show(item)}"
            )
        metric = item["metric"]
        if metric not in M.DIRECTIONS:
            raise ConfigError(
                f"search.objectives: unknown metric {show(metric)}; expected one of "
                + ", ".join(M.DIRECTIONS)
                + did_you_mean(str(metric), list(M.DIRECTIONS))
            )
        mode = item.get("mode", M.DIRECTIONS[metric])
        if mode not in ("min", "max"):
            raise ConfigError(
                f"search.objectives: mode of {metric} must be min or max, got {show(mode)}"
            )
        out.append(Objective(metric, mode))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("search.objectives: a metric is listed twice")
    return tuple(out)
