"""The study file: the run sections plus ``name``, ``output``, ``search``, ``scheduler``,
``resources``, ``ray`` and ``report``, each a frozen dataclass checked once, before anything
starts. No Ray or Optuna imports here: a bad study file fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import metrics as M
from .config import (
    MAX_SEED,
    RUN_SECTIONS,
    RunConfig,
    _did_you_mean,
    _show,
    _show_key,
    apply_overrides,
    build_section,
    coerce,
    read_yaml,
    replace_keys,
    run_config_from_dict,
    to_dict,
)
from .errors import ConfigError

KINDS = ("choice", "uniform", "log_uniform", "int")
ALGORITHMS = ("tpe", "random", "grid", "nsga2")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no trailing \n
_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9._\-\[\]:]+:([0-9]{1,5})")  # host:port
_HOST = re.compile(r"[A-Za-z0-9._\-:]+")  # a name, IPv4 or IPv6 address: no spaces, no /
MAX_NAME = 100  # characters; a folder name may have 255 bytes at most


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


@dataclass(frozen=True)
class SearchConfig:
    algorithm: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    num_trials: int = 8
    max_concurrent: int = 2
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

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["none", "asha"] = "none"
    metric: str = M.VAL_NEG_ELBO  # the per-epoch metric ASHA compares trials on
    grace_period: int = 1
    reduction_factor: int = 2

    def validate(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(f"scheduler.grace_period: got {_show(self.grace_period)}, "
                              "expected an integer >= 1 (epochs before a trial may be stopped)")
        if self.reduction_factor < 2:
            raise ConfigError(f"scheduler.reduction_factor: got {_show(self.reduction_factor)}, "
                              "expected an integer >= 2")
        per_epoch = (M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, M.TRAIN_LOSS)
        if self.metric not in per_epoch:
            raise ConfigError(f"scheduler.metric: got {_show(self.metric)}, expected a metric "
                              "reported every epoch: " + ", ".join(per_epoch))


@dataclass(frozen=True)
class ResourcesConfig:
    cpus_per_trial: float = 1.0
    # A GPU share per trial (0.25 packs four trials on a GPU); auto: a share where the
    # cluster has GPUs, the CPU otherwise.
    gpus_per_trial: float | Literal["auto"] = 0.0

    def validate(self) -> None:
        if not (self.cpus_per_trial > 0):
            raise ConfigError(f"resources.cpus_per_trial: got {_show(self.cpus_per_trial)}, "
                              "expected a positive number of CPUs")
        g = self.gpus_per_trial
        if g != "auto" and not (0 <= g <= 1 or (g > 1 and float(g).is_integer())):
            raise ConfigError(f"resources.gpus_per_trial: got {_show(g)}, expected a fraction "
                              "in [0, 1], a whole number of GPUs, or auto")


@dataclass(frozen=True)
class RayConfig:
    # None: start a local Ray on this machine; auto or host:port: join a running cluster.
    address: str | None = None
    dashboard: bool = True
    # The dashboard listens on this host only; anything but 127.0.0.1/localhost exposes it.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265

    def validate(self) -> None:
        if self.address is not None and self.address not in ("auto", "local"):
            port = _ADDRESS.fullmatch(self.address)
            if port is None or not 1 <= int(port.group(1)) <= 65535:
                raise ConfigError(f"ray.address: got {_show(self.address)}, expected auto, "
                                  "host:port (such as 10.0.0.5:6379) or null for a local Ray")
        if not _HOST.fullmatch(self.dashboard_host):
            raise ConfigError(f"ray.dashboard_host: got {_show(self.dashboard_host)}, expected "
                              "a host name or address such as 127.0.0.1")
        if not 0 <= self.dashboard_port <= 65535:
            raise ConfigError(f"ray.dashboard_port: got {_show(self.dashboard_port)}, a "
                              "dashboard port outside 0-65535; use a free port such as 8265")


@dataclass(frozen=True)
class ReportConfig:
    dir: str = "reports"
    enabled: bool = True  # build the report when the study ends


@dataclass(frozen=True)
class StudyConfig:
    name: str
    base: RunConfig
    search: SearchConfig
    output: OutputConfig = field(default_factory=OutputConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def folder(self) -> Path:
        return Path(self.output.dir) / self.name

    def trial_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The run configuration of one trial: the base with the searched keys set."""
        return replace_keys(self.base, params)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **to_dict(self.base)}
        out["output"] = to_dict(self.output)
        out["search"] = search_to_dict(self.search)
        for key in ("scheduler", "resources", "ray", "report"):
            out[key] = to_dict(getattr(self, key))
        return out

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study: everything that changes a trial's result."""
        d = self.to_dict()
        return {k: d[k] for k in (*RUN_SECTIONS, "search", "scheduler")}


STUDY_SECTIONS = ("name", "output", "search", "scheduler", "resources", "ray", "report")


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
        "algorithm": s.algorithm, "num_trials": s.num_trials,
        "max_concurrent": s.max_concurrent, "seed": s.seed, "space": space,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in s.objectives],
        "points_to_evaluate": [dict(p) for p in s.points_to_evaluate],
        "sampler_options": dict(s.sampler_options),
        "select_on_test": s.select_on_test,
    }


# ---------------------------------------------------------------------------------------
# Parsing.


def _run_keys() -> dict[str, Any]:
    import typing

    from .config import DataConfig, EvalConfig, ModelConfig, TrainConfig

    keys = {}
    for section, cls in zip(RUN_SECTIONS, (DataConfig, ModelConfig, TrainConfig, EvalConfig),
                            strict=True):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # fields only: not the SECTION class variable
            keys[f"{section}.{f.name}"] = hints[f.name]
    return keys


# Data keys a search may not vary: they change the evaluation data every trial is scored on
# (data.train_subset and data.binarize static/dynamic change the training data only).
_FIXED_IN_A_STUDY = {
    "data.dataset": "it changes the data every trial is scored on; run one study per dataset",
    "data.val_size": "it changes the validation examples every trial is scored on and "
                     "selected by; set it once in the data section",
    "data.root": "it says where the files are, not how a trial trains; set it once in the "
                 "data section",
}


def _parse_param(key: str, spec: Any, base: RunConfig) -> Param:
    where = f"search.space.{_show_key(key)}"
    run_keys = _run_keys()
    if key not in run_keys:
        raise ConfigError(f"{where}: {_show(key)} is not a run key; searchable keys look like "
                          "train.beta or model.latent_dim" + _did_you_mean(key, list(run_keys)))
    if key in _FIXED_IN_A_STUDY:
        raise ConfigError(f"{where}: got {spec!r:.80}, but {key} cannot be searched: "
                          f"{_FIXED_IN_A_STUDY[key]}")
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{where}: expected one of {{choice: [...]}}, {{uniform: [low, high]}}"
                          ", {log_uniform: [low, high]}, {int: [low, high]}; got "
                          + _show(spec))
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "log"]
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{where}: expected exactly one of " + ", ".join(KINDS)
                          + f" (and log: true for int); got keys {_show(list(spec))}")
    kind = kinds[0]
    value = spec[kind]
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and kind != "int"):
        raise ConfigError(f"{where}.log: only int ranges take log: true (use log_uniform for "
                          "floats)")
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}.choice: expected a non-empty list of values, got "
                              f"{_show(value)}")
        values = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        for v in value:  # every choice must be a valid value of its key
            _same_quantity(base, replace_keys(base, {key: v}), key, v)
        return Param(key, "choice", values=values)
    bounds = [_number(v) for v in value] if isinstance(value, list) else []
    if len(bounds) != 2 or None in bounds:
        raise ConfigError(f"{where}.{kind}: expected [low, high] numbers, got {_show(value)}")
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}.{kind}: expected finite bounds, got {_show(value)}")
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low < high must hold, but got "
                          f"(low={_show(value[0])}, high={_show(value[1])})")
    if (kind == "log_uniform" or log) and low <= 0:
        raise ConfigError(f"{where}.{kind}: a log scale needs low > 0, but got "
                          f"low={_show(value[0])}")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}.int: expected integer bounds, got {_show(value)}")
    hint = run_keys[key]
    if kind == "int" and hint is not int and int | None != hint:
        raise ConfigError(f"{where}: {key} is not an integer key; use uniform or log_uniform")
    if kind in ("uniform", "log_uniform") and hint is not float:
        raise ConfigError(f"{where}: {key} is not a real-valued key; use int or choice")
    for bound in (low, high):  # the range must lie inside what the key accepts
        replace_keys(base, {key: int(bound) if kind == "int" else bound})
    return Param(key, kind, low=low, high=high, log=log)


def _number(value: Any) -> float | None:
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
            + "); trials must be comparable: run one study per kind")


def _parse_objectives(raw: Any, base: RunConfig, select_on_test: bool
                      ) -> tuple[Objective, ...]:
    objectives = _objectives_from(raw, base)
    available = _available_metrics(base)
    for o in objectives:
        if o.metric not in available:
            raise ConfigError(
                f"search.objectives: {o.metric} is not computed for this study's model and data "
                f"({M.QUANTITY_WORDS[base.quantity]}); use one of "
                + ", ".join(m for m in M.DIRECTIONS if m in available))
    on_test = [o.metric for o in objectives if M.is_test_metric(o.metric)]
    if on_test and not select_on_test:
        raise ConfigError(
            f"search.objectives: {', '.join(on_test)} is a test metric, and a search that "
            "selects on the test split biases every test number it reports; select on "
            f"validation ({M.bound_key('val', base.quantity)}, val/rate, val/distortion, "
            "val/neg_elbo), or set search.select_on_test: true to do it anyway")
    if on_test:
        warnings.warn(f"search.select_on_test: the study selects on {', '.join(on_test)}; its "
                      "test numbers are optimistically biased and are not held-out estimates",
                      stacklevel=2)
    return objectives


def _available_metrics(base: RunConfig) -> set[str]:
    """The metrics a trial of ``base`` reports: the bound under its honest name only."""
    out = set(M.DIRECTIONS)
    for split in ("val", "test"):
        other = (M.QUANTITY_CROSS_ENTROPY if base.quantity == M.QUANTITY_NLL
                 else M.QUANTITY_NLL)
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
        raise ConfigError("search.objectives: expected a metric name or a list of "
                          "{metric: ..., mode: min|max}, such as [{metric: test/rate, mode: "
                          f"min}}, {{metric: test/distortion, mode: min}}]; got {_show(raw)}")
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {"metric": item}
        if not isinstance(item, Mapping) or set(item) - {"metric", "mode"} or "metric" not in item:
            raise ConfigError(f"search.objectives: expected {{metric: NAME, mode: min|max}}, got "
                              f"{_show(item)}")
        metric = item["metric"]
        if metric not in M.DIRECTIONS:
            raise ConfigError(f"search.objectives: unknown metric {_show(metric)}; expected one of "
                              + ", ".join(M.DIRECTIONS) + _did_you_mean(str(metric),
                                                                        list(M.DIRECTIONS)))
        mode = item.get("mode", M.DIRECTIONS[metric])
        if mode not in ("min", "max"):
            raise ConfigError(f"search.objectives: mode of {metric} must be min or max, got "
                              f"{_show(mode)}")
        out.append(Objective(metric, mode))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("search.objectives: a metric is listed twice")
    return tuple(out)


def _parse_search(raw: Any, base: RunConfig) -> SearchConfig:
    if raw is None:
        raise ConfigError("search: missing; a study needs search.space (what to vary) and "
                          "search.num_trials")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"search: expected a mapping, got {_show(raw)}")
    names = [f.name for f in dataclasses.fields(SearchConfig)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown key search.{_show_key(key)}; the keys of search are: "
                              + ", ".join(names) + _did_you_mean(str(key), names))
    space_raw = raw.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError("search.space: empty; name at least one key to vary, such as "
                          "train.beta: {log_uniform: [0.05, 20]}")
    space = tuple(_parse_param(str(k), v, base) for k, v in space_raw.items())
    algorithm = coerce(raw.get("algorithm", "tpe"), Literal["tpe", "random", "grid", "nsga2"],
                       "search.algorithm")
    num_trials = coerce(raw.get("num_trials", 8), int, "search.num_trials")
    max_conc = coerce(raw.get("max_concurrent", 2), int, "search.max_concurrent")
    seed = coerce(raw.get("seed", 0), int, "search.seed")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"search.seed: got {_show(seed)}, expected an integer in "
                          "[0, 2**32 - 1]")
    if num_trials < 1:
        raise ConfigError(f"search.num_trials: got {num_trials}, expected an integer >= 1")
    if max_conc < 1:
        raise ConfigError(f"search.max_concurrent: got {max_conc}, expected an integer >= 1")
    if max_conc > num_trials:
        raise ConfigError(f"search.max_concurrent: got {max_conc}, more than search.num_trials"
                          f"={num_trials}; it must be <= num_trials")
    select_on_test = coerce(raw.get("select_on_test", False), bool, "search.select_on_test")
    objectives = _parse_objectives(raw.get("objectives"), base, select_on_test)
    if algorithm == "grid":
        not_choice = [p.key for p in space if p.kind != "choice"]
        if not_choice:
            raise ConfigError("search.algorithm: grid needs every search.space key to be a "
                              "choice; not a choice: " + ", ".join(not_choice))
        points = math.prod(len(p.values) for p in space)
        if num_trials > points:
            raise ConfigError(f"search.num_trials: got {num_trials}, but the grid has "
                              f"{points} points; use num_trials <= {points} (each point once)")
    points = raw.get("points_to_evaluate") or []
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError("search.points_to_evaluate: expected a list of mappings such as "
                          "[{train.beta: 1.0}]")
    space_keys = {p.key for p in space}
    for point in points:
        unknown = set(point) - space_keys
        if unknown:
            raise ConfigError("search.points_to_evaluate: "
                              f"{_show(sorted(map(str, unknown)))} not in "
                              f"search.space ({sorted(space_keys)})")
        _check_point(point, space)
        replace_keys(base, dict(point))
    options = raw.get("sampler_options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"search.sampler_options: expected a mapping, got {_show(options)}")
    search = SearchConfig(algorithm=algorithm, num_trials=num_trials, max_concurrent=max_conc,
                          seed=seed, space=space, objectives=objectives,
                          points_to_evaluate=tuple(dict(p) for p in points),
                          sampler_options=dict(options), select_on_test=select_on_test)
    _check_sampler_options(search)
    return search


def _check_point(point: Mapping[str, Any], space: tuple[Param, ...]) -> None:
    """A point to evaluate must lie in the search space: Optuna would refuse it only once
    the study runs."""
    params = {p.key: p for p in space}
    for key, value in point.items():
        p = params[key]
        if p.kind == "choice":
            if (tuple(value) if isinstance(value, list) else value) not in p.values:
                raise ConfigError(f"search.points_to_evaluate: {key}={_show(value)} is not one "
                                  f"of its choices {_show([to_dict(v) for v in p.values])}")
            continue
        number = _number(value)
        if (number is None or not p.low <= number <= p.high
                or (p.kind == "int" and not number.is_integer())):
            what = "an integer" if p.kind == "int" else "a number"
            raise ConfigError(f"search.points_to_evaluate: {key}={_show(value)} is not "
                              f"{what} in its range [{_show(p.low)}, {_show(p.high)}]")


def _check_sampler_options(search: SearchConfig) -> None:
    """Build the Optuna sampler once, so an unknown or bad option stops the study file
    here and not after Ray has started. Optuna is imported only when there are options."""
    if not search.sampler_options:
        return
    _check_finite(search.sampler_options, "search.sampler_options")
    import warnings

    from .search import make_sampler

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


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name: expected the study's name (a folder name such as "
                          f"beta_sweep), got {_show(name)}")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"name: got {_show(name)}; use letters, digits, '.', '_' and '-' "
                          "only (no path separators, '..' or line breaks: the study folder "
                          "must stay inside output.dir)")
    if len(name) > MAX_NAME:
        raise ConfigError(f"name: got {_show(name)}, {len(name)} characters; use at most "
                          f"{MAX_NAME} (it names a folder)")
    return name


def study_from_dict(raw: Mapping[str, Any]) -> StudyConfig:
    base = run_config_from_dict({k: v for k, v in raw.items() if k in RUN_SECTIONS},
                                extra_sections=())
    for key in raw:
        if key not in RUN_SECTIONS and key not in STUDY_SECTIONS:
            allowed = [*RUN_SECTIONS, *STUDY_SECTIONS]
            raise ConfigError(f"unknown section {_show(key)}; the sections are: "
                              + ", ".join(allowed) + _did_you_mean(str(key), allowed))
    study = StudyConfig(
        name=check_name(raw.get("name")),
        base=base,
        search=_parse_search(raw.get("search"), base),
        output=build_section(OutputConfig, raw.get("output"), "output"),
        scheduler=build_section(SchedulerConfig, raw.get("scheduler"), "scheduler"),
        resources=build_section(ResourcesConfig, raw.get("resources"), "resources"),
        ray=build_section(RayConfig, raw.get("ray"), "ray"),
        report=build_section(ReportConfig, raw.get("report"), "report"),
    )
    if study.scheduler.type == "asha" and study.scheduler.grace_period > study.base.train.epochs:
        raise ConfigError(f"scheduler.grace_period: got {study.scheduler.grace_period}, longer "
                          f"than train.epochs={study.base.train.epochs}; ASHA needs "
                          "grace_period <= train.epochs")
    if study.scheduler.type != "none" and study.search.multi_objective:
        raise ConfigError("scheduler.type: asha compares trials on one metric, but this study "
                          "has " + str(len(study.search.objectives)) + " objectives; use "
                          "scheduler.type: none for a multi-objective study")
    return study


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and check a study file (with ``--set`` overrides): the only entry point."""
    return study_from_dict(apply_overrides(read_yaml(path), overrides))
