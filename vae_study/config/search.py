"""The search section of a study file: what to vary (``space``: Params, see
``config.space``), what to optimise (``objectives``, and the confirmation stage: see
``config.objectives``), where to start (``points_to_evaluate``) and how (the sampler). Built
by the schema like every other section; the checks between keys are in
``SearchConfig.validate``, those that need the base run configuration in ``parse_search``. No
Optuna import, except to try ``sampler_options`` on the sampler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vae_study import metrics as M
from vae_study.config.messages import show, show_key
from vae_study.config.objectives import (
    ConfirmConfig,
    Objective,
    check_confirm,
    check_objectives,
    objectives_from,
)
from vae_study.config.run import MAX_SEED, RunConfig, replace_keys
from vae_study.config.schema import MAX_COUNT, Section, build_section, rule, to_dict
from vae_study.config.space import Param, check_point, parse_param
from vae_study.errors import ConfigError

MAX_REPLICATES = 1000


@dataclass(frozen=True)
class SearchConfig(Section):
    """``search``: how a study searches its space, for how many configurations, on what."""

    SECTION: ClassVar[str] = "search"

    algorithm: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    # Configurations tried (a pack of several is still that many).
    num_trials: int = rule(8, ge=1, at_most=MAX_COUNT, expected="an integer >= 1")
    max_concurrent: int = rule(2, ge=1, at_most=MAX_COUNT, expected="an integer >= 1")
    # Seeds per configuration: replicate r trains with train.seed + r, the same seed in every
    # configuration (paired comparisons); Optuna is told the mean over the replicates.
    replicates: int = rule(
        1,
        ge=1,
        le=MAX_REPLICATES,
        expected=f"an integer in [1, {MAX_REPLICATES}] (seeds trained per configuration)",
    )
    seed: int = rule(0, ge=0, le=MAX_SEED, expected="an integer in [0, 2**32 - 1]")
    space: tuple[Param, ...] = ()
    # Default: the validation bound, val/nll (val/ce_bound for grey-level Bernoulli).
    objectives: tuple[Objective, ...] = (Objective(M.VAL_NLL, "min"),)
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    # Extra keyword arguments of the Optuna sampler, e.g. {n_startup_trials: 16} for TPE.
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # Test metrics may drive the search only when this says so: selecting on test biases
    # every test number the study reports.
    select_on_test: bool = False
    # The confirmation stage (None: the study ends with the search); see ConfirmConfig.
    confirm: ConfirmConfig | None = None

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def validate(self) -> None:
        """The checks between keys of the section (those that need the base run
        configuration are in ``parse_search``)."""
        if self.replicates > 1 and any(p.key == "train.seed" for p in self.space):
            raise ConfigError(
                f"search.space.train.seed: searched with search.replicates: {self.replicates}; "
                "the replicates' seeds are train.seed + 0, 1, ...: set train.seed in the train "
                "section, or search train.seed with replicates: 1"
            )
        if self.max_concurrent > self.num_trials:
            raise ConfigError(
                f"search.max_concurrent: got {self.max_concurrent}, more than "
                f"search.num_trials={self.num_trials}; it must be <= num_trials"
            )
        if self.algorithm == "grid":
            not_choice = [p.key for p in self.space if p.kind != "choice"]
            if not_choice:
                raise ConfigError(
                    "search.algorithm: grid needs every search.space key to be "
                    "a choice; not a choice: " + ", ".join(not_choice)
                )
            points = math.prod(len(p.values) for p in self.space)
            if self.num_trials > points:
                raise ConfigError(
                    f"search.num_trials: got {self.num_trials}, but the grid has "
                    f"{points} points; use num_trials <= {points} (each point "
                    "once)"
                )
        space_keys = {p.key for p in self.space}
        for point in self.points_to_evaluate:
            unknown = set(point) - space_keys
            if unknown:
                raise ConfigError(
                    "search.points_to_evaluate: "
                    f"{show(sorted(map(str, unknown)))} not in "
                    f"search.space ({sorted(space_keys)})"
                )
            check_point(point, self.space)
        _check_sampler_options(self)
        check_confirm(self.confirm, self.objectives, self.num_trials)


def search_to_dict(s: SearchConfig) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for p in s.space:
        if p.kind == "choice":
            space[p.key] = {"choice": list(p.values)}
        elif p.kind == "int":
            space[p.key] = {"int": [int(p.low), int(p.high)], **({"log": True} if p.log else {})}
        else:
            space[p.key] = {p.kind: [p.low, p.high]}
    return {
        "algorithm": s.algorithm,
        "num_trials": s.num_trials,
        "max_concurrent": s.max_concurrent,
        "seed": s.seed,
        "space": space,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in s.objectives],
        "points_to_evaluate": [dict(p) for p in s.points_to_evaluate],
        "sampler_options": dict(s.sampler_options),
        "select_on_test": s.select_on_test,
        # Only when set: a study folder written before the key existed still resumes.
        **({"confirm": to_dict(s.confirm)} if s.confirm is not None else {}),
        # Written only when set: a study folder made before the key existed still resumes.
        **({"replicates": s.replicates} if s.replicates != 1 else {}),
    }


def parse_search(raw: Any, base: RunConfig) -> SearchConfig:
    """The search section, built like every other section (``build_section``: unknown keys,
    types, the dataclass's defaults, ``SearchConfig.validate``) once its two structured keys
    are typed: ``space`` as Params and ``objectives`` as Objectives. Then the checks that
    need the base run configuration."""
    if raw is None:
        raise ConfigError(
            "search: missing; a study needs search.space (what to vary) and search.num_trials"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"search: expected a mapping, got {show(raw)}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError(
            "search.space: empty; name at least one key to vary, such as "
            "train.beta: {log_uniform: [0.05, 20]}"
        )
    typed = {
        k: v
        for k, v in raw.items()
        if not (k in ("points_to_evaluate", "sampler_options", "confirm") and v is None)
    }
    if typed.get("confirm") is not None:  # built here: its own keys' messages, not a union's
        typed["confirm"] = build_section(ConfirmConfig, typed["confirm"], "search.confirm")
    typed["space"] = tuple(parse_param(str(k), v, base) for k, v in space_raw.items())
    typed["objectives"] = objectives_from(raw.get("objectives"), base)
    search = build_section(SearchConfig, typed, "search")
    check_objectives(search.objectives, base, select_on_test=search.select_on_test)
    for point in search.points_to_evaluate:
        replace_keys(base, dict(point))
    return search


def _check_sampler_options(search: SearchConfig) -> None:
    """Build the Optuna sampler once, so an unknown or bad option stops the study file
    here and not after Ray has started. Optuna is imported only when there are options."""
    if not search.sampler_options:
        return
    _check_finite(search.sampler_options, "search.sampler_options")
    from vae_study.config.optuna_space import make_sampler

    with warnings.catch_warnings():  # Optuna's experimental-feature warnings: shown at run
        warnings.simplefilter("ignore")
        make_sampler(search)


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: got {show(value)}, expected a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{show_key(k)}")
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(v, where)
