"""The search space of a study: ``search.space`` parsed into ``Param``s, one per searched run
key (``train.beta: {log_uniform: [0.05, 20]}``), each checked against the base run
configuration: a key that exists and may be searched, a range or choices it accepts, values
that keep the study's numbers comparable."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vae_study import metrics as M
from vae_study.config.data import DataConfig
from vae_study.config.messages import did_you_mean, show, show_key
from vae_study.config.run import EvalConfig, ModelConfig, RunConfig, TrainConfig, replace_keys
from vae_study.config.schema import to_dict
from vae_study.errors import ConfigError

KINDS = ("choice", "uniform", "log_uniform", "int")


@dataclass(frozen=True)
class Param:
    """One searched key: ``train.beta: {log_uniform: [0.05, 20]}``."""

    key: str  # a run key, section.key
    kind: Literal["choice", "uniform", "log_uniform", "int"]
    values: tuple[Any, ...] = ()  # choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False  # int only (uniform/log_uniform say it in their kind)


def _run_keys() -> dict[str, Any]:
    """Every run key (``train.beta``) with its type."""
    keys = {}
    for cls in (DataConfig, ModelConfig, TrainConfig, EvalConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # fields only: not the SECTION class variable
            keys[f"{cls.SECTION}.{f.name}"] = hints[f.name]
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


def parse_param(key: str, spec: Any, base: RunConfig) -> Param:
    where = f"search.space.{show_key(key)}"
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
                f"{where}: {show(name)} is not an option name; {_OPTIONS}.<name> takes a "
                "Python identifier, a keyword argument of the model class"
            )
        run_keys[key] = Any  # a user model's keyword argument: any scalar the class takes
    if key not in run_keys:
        raise ConfigError(
            f"{where}: {show(key)} is not a run key; searchable keys look like "
            "train.beta or model.latent_dim" + did_you_mean(key, list(run_keys))
        )
    if key in _FIXED_IN_A_STUDY:
        raise ConfigError(
            f"{where}: got {spec!r:.80}, but {key} cannot be searched: {_FIXED_IN_A_STUDY[key]}"
        )
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(
            f"{where}: expected one of {{choice: [...]}}, {{uniform: [low, high]}}"
            ", {log_uniform: [low, high]}, {int: [low, high]}; got " + show(spec)
        )
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "log"]
    if len(kinds) != 1 or extra:
        raise ConfigError(
            f"{where}: expected exactly one of "
            + ", ".join(KINDS)
            + f" (and log: true for int); got keys {show(list(spec))}"
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
                f"{where}.choice: expected a non-empty list of values, got {show(value)}"
            )
        values = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        for v in value:  # every choice must be a valid value of its key
            _same_quantity(base, replace_keys(base, {key: v}), key, v)
        return Param(key, "choice", values=values)
    bounds = [_bound(v) for v in value] if isinstance(value, list) else []
    if len(bounds) != 2 or None in bounds:
        raise ConfigError(f"{where}.{kind}: expected [low, high] numbers, got {show(value)}")
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}.{kind}: expected finite bounds, got {show(value)}")
    if not low < high:
        raise ConfigError(
            f"{where}.{kind}: low < high must hold, but got "
            f"(low={show(value[0])}, high={show(value[1])})"
        )
    if (kind == "log_uniform" or log) and low <= 0:
        raise ConfigError(
            f"{where}.{kind}: a log scale needs low > 0, but got low={show(value[0])}"
        )
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}.int: expected integer bounds, got {show(value)}")
    hint = run_keys[key]
    if kind == "int" and hint not in (int, Any) and int | None != hint:
        raise ConfigError(f"{where}: {key} is not an integer key; use uniform or log_uniform")
    if kind in ("uniform", "log_uniform") and hint not in (float, Any):
        raise ConfigError(f"{where}: {key} is not a real-valued key; use int or choice")
    for bound in (low, high):  # the range must lie inside what the key accepts
        replace_keys(base, {key: int(bound) if kind == "int" else bound})
    return Param(key, kind, low=low, high=high, log=log)


def _bound(value: Any) -> float | None:
    """A bound as a float (``1e-4`` written as text too, as a float key reads it), or None."""
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
            f"search.space.{key}: the choice {show(value)} changes what the study's numbers are "
            f"({M.QUANTITY_WORDS[trial.quantity]}"
            + (", of dequantised pixels" if trial.dequantized else "")
            + f", against the base configuration's {M.QUANTITY_WORDS[base.quantity]}"
            + (", of dequantised pixels" if base.dequantized else "")
            + "); trials must be comparable: run one study per kind"
        )


def check_point(point: Mapping[str, Any], space: tuple[Param, ...]) -> None:
    """A point to evaluate must lie in the search space: Optuna would refuse it only once
    the study runs."""
    params = {p.key: p for p in space}
    for key, value in point.items():
        p = params[key]
        if p.kind == "choice":
            if (tuple(value) if isinstance(value, list) else value) not in p.values:
                raise ConfigError(
                    f"search.points_to_evaluate: {key}={show(value)} is not one "
                    f"of its choices {show([to_dict(v) for v in p.values])}"
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
                f"search.points_to_evaluate: {key}={show(value)} is not "
                f"{what} in its range [{show(p.low)}, {show(p.high)}]"
            )


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
