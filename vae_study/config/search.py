"""The search section of a study file: what to vary (``space``: Params), what to optimise
(``objectives``), where to start (``points_to_evaluate``) and how (the sampler). Built with
the same machinery as every other section (``config.build_section``); the checks between
keys are in ``SearchConfig.validate``, those that need the base run configuration in
``parse_search``. No Optuna import, except to try ``sampler_options`` on the sampler.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vae_study import metrics as M
from vae_study.config.run import (
    MAX_SEED,
    RUN_SECTIONS,
    RunConfig,
    Section,
    build_section,
    did_you_mean,
    replace_keys,
    to_dict,
)
from vae_study.config.yaml_file import _show, _show_key
from vae_study.errors import ConfigError

KINDS = ("choice", "uniform", "log_uniform", "int")
ALGORITHMS = ("tpe", "random", "grid", "nsga2")
MAX_REPLICATES = 1000
# The keys fused members of one Ray trial may differ in (vae_study.core.fused.MEMBER_KEYS, here
# without importing torch); the searcher holds every other searched key equal in a pack.
MEMBER_KEYS = ("train.beta", "train.seed", "train.lr", "model.gaussian_std")
MEMBER_PREFIXES = ("eval.",)


@dataclass(frozen=True)
class Param:
    """One searched key: ``train.beta: {log_uniform: [0.05, 20]}``."""

    key: str  # a run key, section.key
    kind: Literal["choice", "uniform", "log_uniform", "int"]
    values: tuple[Any, ...] = ()  # choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False  # int only (uniform/log_uniform say it in their kind)


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Literal["min", "max"]


# Counts of the confirmation stage (configurations, seeds) beyond which a study is a typo.
MAX_CONFIRM = 10**4


@dataclass(frozen=True)
class ConfirmConfig(Section):
    """``search.confirm: {top: N, replicates: R}``: the last stage of a study. Once the search
    has finished, its N best configurations on validation are trained again with R fresh
    seeds (none used in the search) and the report quotes their test mean +- standard error.
    """

    SECTION: ClassVar[str] = "search.confirm"

    top: int = 1  # configurations confirmed: the best N on the validation objective(s)
    replicates: int = 3  # fresh seeds per confirmed configuration

    def validate(self) -> None:
        if not 1 <= self.top <= MAX_CONFIRM:
            raise ConfigError(
                f"search.confirm.top: got {_show(self.top)}, expected the number of best "
                f"configurations to confirm, an integer in [1, {MAX_CONFIRM}]"
            )
        if not 2 <= self.replicates <= MAX_CONFIRM:
            raise ConfigError(
                f"search.confirm.replicates: got {_show(self.replicates)}, expected an integer "
                f"in [2, {MAX_CONFIRM}]: a confirmation with one seed has no error bar "
                "(no standard error); use 2 or more, or drop search.confirm"
            )


@dataclass(frozen=True)
class SearchConfig(Section):
    SECTION: ClassVar[str] = "search"

    algorithm: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    num_trials: int = 8  # configurations tried (a pack of several is still that many)
    max_concurrent: int = 2
    # Seeds per configuration: replicate r trains with train.seed + r, the same seed in every
    # configuration (paired comparisons); Optuna is told the mean over the replicates.
    replicates: int = 1
    seed: int = 0
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
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(
                f"search.seed: got {_show(self.seed)}, expected an integer in [0, 2**32 - 1]"
            )
        if self.num_trials < 1:
            raise ConfigError(f"search.num_trials: got {self.num_trials}, expected an integer >= 1")
        if not 1 <= self.replicates <= MAX_REPLICATES:
            raise ConfigError(
                f"search.replicates: got {_show(self.replicates)}, expected an integer in "
                f"[1, {MAX_REPLICATES}] (seeds trained per configuration)"
            )
        if self.replicates > 1 and any(p.key == "train.seed" for p in self.space):
            raise ConfigError(
                f"search.space.train.seed: searched with search.replicates: {self.replicates}; "
                "the replicates' seeds are train.seed + 0, 1, ...: set train.seed in the train "
                "section, or search train.seed with replicates: 1"
            )
        if self.max_concurrent < 1:
            raise ConfigError(
                f"search.max_concurrent: got {self.max_concurrent}, expected an integer >= 1"
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
                    f"{_show(sorted(map(str, unknown)))} not in "
                    f"search.space ({sorted(space_keys)})"
                )
            _check_point(point, self.space)
        _check_sampler_options(self)
        _check_confirm(self)


def _check_confirm(search: SearchConfig) -> None:
    """A confirmation selects on validation and quotes test: a study that selects on test
    has nothing left to confirm on, and it cannot confirm more configurations than it
    searched."""
    confirm = search.confirm
    if confirm is None:
        return
    on_test = [o.metric for o in search.objectives if M.is_test_metric(o.metric)]
    if on_test:
        raise ConfigError(
            f"search.confirm: the study selects on {', '.join(on_test)}, a test metric; a "
            "confirmation selects on validation and quotes test, so its test numbers would be "
            "biased: select on a validation metric (search.objectives), or drop search.confirm"
        )
    if confirm.top > search.num_trials:
        raise ConfigError(
            f"search.confirm.top: got {confirm.top}, more configurations than the search "
            f"tries (search.num_trials={search.num_trials}); use top <= num_trials"
        )


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


# ---------------------------------------------------------------------------------------
# Parsing.


def _run_keys() -> dict[str, Any]:

    from vae_study.config.run import DataConfig, EvalConfig, ModelConfig, TrainConfig

    keys = {}
    for section, cls in zip(
        RUN_SECTIONS, (DataConfig, ModelConfig, TrainConfig, EvalConfig), strict=True
    ):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # fields only: not the SECTION class variable
            keys[f"{section}.{f.name}"] = hints[f.name]
    return keys


# A user model's keyword arguments (a mapping): searched one at a time, model.options.<name>.
_OPTIONS = "model.options"

# Run keys a search may not vary, with why: the data keys that change the evaluation data
# every trial is scored on (data.train_subset and data.binarize static/dynamic change the
# training data only, and may be searched), and the eval keys below.
_FIXED_IN_A_STUDY = {
    "data.dataset": "it changes the data every trial is scored on; run one study per dataset",
    "data.val_size": "it changes the validation examples every trial is scored on and "
    "selected by; set it once in the data section",
    "data.root": "it says where the files are, not how a trial trains; set it once in the "
    "data section",
    **{
        f"data.{key}": "it says which data every trial is scored on; set it once in the "
        "data section"
        for key in ("path", "train_dir", "val_dir", "test_dir", "image_size", "channels", "binary")
    },
    # Eval keys: each changes an estimator or the examples it averages over, so a study
    # varying one would select on how trials are measured, not on the models. Only
    # eval.chunk_size (decoder rows alive at once: memory, not the numbers) may be searched.
    "eval.k": "it changes how the test bound test/nll = -L_K is estimated (a larger K gives "
    "a tighter bound), so trials would be compared on the estimator, not the model; set it "
    "once for the whole study",
    "eval.val_k": "it changes how the validation bound is estimated (val -L_10 and -L_1000 "
    "differ by about 2 nats on one model), so a study would select on the estimator, not the "
    "model; set it once for the whole study",
    "eval.val_examples": "it changes which validation examples val/nll averages over, the "
    "number studies select on; set it once for the whole study",
    "eval.nll_examples": "it changes which test examples test/nll and test/bound_gap average "
    "over; set it once for the whole study",
    "eval.surgery_examples": "it changes the test examples the ELBO surgery terms (mutual "
    "information, marginal KL) are estimated on, and their aggregate posterior; set it once "
    "for the whole study",
}


def _parse_param(key: str, spec: Any, base: RunConfig) -> Param:
    where = f"search.space.{_show_key(key)}"
    run_keys = _run_keys()
    if key == _OPTIONS:
        raise ConfigError(
            f"{where}: the whole mapping {_OPTIONS} cannot be searched; search one option "
            f"at a time, as {_OPTIONS}.<name> (such as {_OPTIONS}.width: {{choice: [16, 32]}})"
        )
    if key.startswith(_OPTIONS + "."):
        name = key[len(_OPTIONS) + 1 :]
        if not name.isidentifier():
            raise ConfigError(
                f"{where}: {_show(name)} is not an option name; {_OPTIONS}.<name> takes a "
                "Python identifier, a keyword argument of the model class"
            )
        run_keys[key] = Any  # a user model's keyword argument: any scalar the class takes
    if key not in run_keys:
        raise ConfigError(
            f"{where}: {_show(key)} is not a run key; searchable keys look like "
            "train.beta or model.latent_dim" + did_you_mean(key, list(run_keys))
        )
    if key in _FIXED_IN_A_STUDY:
        raise ConfigError(
            f"{where}: got {spec!r:.80}, but {key} cannot be searched: {_FIXED_IN_A_STUDY[key]}"
        )
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(
            f"{where}: expected one of {{choice: [...]}}, {{uniform: [low, high]}}"
            ", {log_uniform: [low, high]}, {int: [low, high]}; got " + _show(spec)
        )
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "log"]
    if len(kinds) != 1 or extra:
        raise ConfigError(
            f"{where}: expected exactly one of "
            + ", ".join(KINDS)
            + f" (and log: true for int); got keys {_show(list(spec))}"
        )
    kind = kinds[0]
    value = spec[kind]
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and kind != "int"):
        raise ConfigError(
            f"{where}.log: only int ranges take log: true (use log_uniform for floats)"
        )
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"{where}.choice: expected a non-empty list of values, got {_show(value)}"
            )
        values = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        for v in value:  # every choice must be a valid value of its key
            _same_quantity(base, replace_keys(base, {key: v}), key, v)
        return Param(key, "choice", values=values)
    bounds = [_bound(v) for v in value] if isinstance(value, list) else []
    if len(bounds) != 2 or None in bounds:
        raise ConfigError(f"{where}.{kind}: expected [low, high] numbers, got {_show(value)}")
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}.{kind}: expected finite bounds, got {_show(value)}")
    if not low < high:
        raise ConfigError(
            f"{where}.{kind}: low < high must hold, but got "
            f"(low={_show(value[0])}, high={_show(value[1])})"
        )
    if (kind == "log_uniform" or log) and low <= 0:
        raise ConfigError(
            f"{where}.{kind}: a log scale needs low > 0, but got low={_show(value[0])}"
        )
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}.int: expected integer bounds, got {_show(value)}")
    hint = run_keys[key]
    if kind == "int" and hint not in (int, Any) and int | None != hint:
        raise ConfigError(f"{where}: {key} is not an integer key; use uniform or log_uniform")
    if kind in ("uniform", "log_uniform") and hint not in (float, Any):
        raise ConfigError(f"{where}: {key} is not a real-valued key; use int or choice")
    for bound in (low, high):  # the range must lie inside what the key accepts
        replace_keys(base, {key: int(bound) if kind == "int" else bound})
    return Param(key, kind, low=low, high=high, log=log)


def _bound(value: Any) -> float | None:
    """A bound as a float (``1e-4`` written as text too, as ``coerce`` reads it), or None."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf


def _same_quantity(base: RunConfig, trial: RunConfig, key: str, value: Any) -> None:
    """A searched value may not change what the study's bound is (a likelihood, a
    cross-entropy, a density of dequantised pixels): trials would not be comparable."""
    if (trial.quantity, trial.dequantized) != (base.quantity, base.dequantized):
        raise ConfigError(
            f"search.space.{key}: the choice {_show(value)} changes what the study's numbers are "
            f"({M.QUANTITY_WORDS[trial.quantity]}"
            + (", of dequantised pixels" if trial.dequantized else "")
            + f", against the base configuration's {M.QUANTITY_WORDS[base.quantity]}"
            + (", of dequantised pixels" if base.dequantized else "")
            + "); trials must be comparable: run one study per kind"
        )


def _check_objectives(search: SearchConfig, base: RunConfig) -> None:
    """The objectives are computed for ``base`` and, unless the study says so, not on test."""
    objectives = search.objectives
    available = _available_metrics(base)
    for o in objectives:
        if o.metric not in available:
            raise ConfigError(
                f"search.objectives: {o.metric} is not computed for this study's model and data "
                f"({M.QUANTITY_WORDS[base.quantity]}); use one of "
                + ", ".join(m for m in M.DIRECTIONS if m in available)
            )
    on_test = [o.metric for o in objectives if M.is_test_metric(o.metric)]
    if on_test and not search.select_on_test:
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


def _objectives_from(raw: Any, base: RunConfig) -> tuple[Objective, ...]:
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
            f"min}}, {{metric: test/distortion, mode: min}}]; got {_show(raw)}"
        )
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, Mapping) or set(item) - {"metric", "mode"} or "metric" not in item:
            raise ConfigError(
                f"search.objectives: expected {{metric: NAME, mode: min|max}}, got {_show(item)}"
            )
        metric = item["metric"]
        if metric not in M.DIRECTIONS:
            raise ConfigError(
                f"search.objectives: unknown metric {_show(metric)}; expected one of "
                + ", ".join(M.DIRECTIONS)
                + did_you_mean(str(metric), list(M.DIRECTIONS))
            )
        mode = item.get("mode", M.DIRECTIONS[metric])
        if mode not in ("min", "max"):
            raise ConfigError(
                f"search.objectives: mode of {metric} must be min or max, got {_show(mode)}"
            )
        out.append(Objective(metric, mode))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("search.objectives: a metric is listed twice")
    return tuple(out)


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
        raise ConfigError(f"search: expected a mapping, got {_show(raw)}")
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
    typed["space"] = tuple(_parse_param(str(k), v, base) for k, v in space_raw.items())
    typed["objectives"] = _objectives_from(raw.get("objectives"), base)
    search = build_section(SearchConfig, typed, "search")
    _check_objectives(search, base)
    for point in search.points_to_evaluate:
        replace_keys(base, dict(point))
    return search


def _check_point(point: Mapping[str, Any], space: tuple[Param, ...]) -> None:
    """A point to evaluate must lie in the search space: Optuna would refuse it only once
    the study runs."""
    params = {p.key: p for p in space}
    for key, value in point.items():
        p = params[key]
        if p.kind == "choice":
            if (tuple(value) if isinstance(value, list) else value) not in p.values:
                raise ConfigError(
                    f"search.points_to_evaluate: {key}={_show(value)} is not one "
                    f"of its choices {_show([to_dict(v) for v in p.values])}"
                )
            continue
        number = _bound(value)
        if (
            number is None
            or not p.low <= number <= p.high
            or (p.kind == "int" and not number.is_integer())
        ):
            what = "an integer" if p.kind == "int" else "a number"
            raise ConfigError(
                f"search.points_to_evaluate: {key}={_show(value)} is not "
                f"{what} in its range [{_show(p.low)}, {_show(p.high)}]"
            )


def _check_sampler_options(search: SearchConfig) -> None:
    """Build the Optuna sampler once, so an unknown or bad option stops the study file
    here and not after Ray has started. Optuna is imported only when there are options."""
    if not search.sampler_options:
        return
    _check_finite(search.sampler_options, "search.sampler_options")
    import warnings

    from vae_study.config.optuna_space import make_sampler

    with warnings.catch_warnings():  # Optuna's experimental-feature warnings: shown at run
        warnings.simplefilter("ignore")
        make_sampler(search)


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: got {_show(value)}, expected a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{_show_key(k)}")
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(v, where)


def model_variants(base: RunConfig, space: tuple[Param, ...]) -> list[RunConfig]:
    """The base configuration and, for each searched ``model.*`` key, one configuration per
    choice (a range: its two ends): the models a study builds once before any trial starts,
    so a user model that breaks with one searched value fails there, not in a trial."""
    out = [base]
    for p in space:
        if p.key.startswith("model."):
            values = p.values if p.kind == "choice" else (p.low, p.high)
            for v in values:
                v = int(v) if p.kind == "int" else v
                out.append(replace_keys(base, {p.key: list(v) if isinstance(v, tuple) else v}))
    return out
