"""The schema of a config section: a frozen dataclass whose fields carry their rule.

::

    @dataclass(frozen=True)
    class TrainConfig(Section):
        SECTION: ClassVar[str] = "train"  # the key prefix in messages: train.epochs

        epochs: int = rule(10, ge=1, at_most=MAX_COUNT, expected="an integer >= 1")

A field's type says what its value is, converted where that is lossless (a list to a tuple, 1
to 1.0, ``1e-3`` text to a number); its ``rule`` says which values it takes; the section's
``validate`` states the rules between keys. A section checks itself when it is built, from a
mapping (``build_section``, what a study file goes through) or in Python
(``TrainConfig(lr=-1)``), so a config made in a notebook is checked as strictly as one read
from YAML. Every error names the key, the value received and what is expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vae_study.config.messages import did_you_mean, require, show, show_key
from vae_study.errors import ConfigError

# Counts beyond which a run cannot finish (or fit in memory): such a value would fail deep
# inside torch, Ray or Optuna instead of here. Every other integer must fit in 64 bits.
MAX_COUNT = 10**6
_INT64 = 2**63
_RULE = "vae_study.rule"  # the key of a field's Rule in its metadata


@dataclass(frozen=True)
class Rule:
    """Which values of its type a field takes. The bounds apply to a number (to each item of
    a list) and ``test`` to the whole value; None, the value of an optional key left out,
    passes. ``expected`` says what is allowed, in the words of the error message."""

    expected: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    test: Callable[[Any], Any] | None = None
    # A count's ceiling, checked with the type (message: "expected at most N").
    at_most: int | None = None

    def check(self, value: Any, key: str) -> None:
        """Raise a ``ConfigError`` naming ``key`` unless ``value`` keeps the rule."""
        if value is None:
            return
        items = value if isinstance(value, tuple) else (value,)
        ok = (self.test is None or bool(self.test(value))) and all(map(self._in_bounds, items))
        require(ok, key, list(value) if isinstance(value, tuple) else value, self.expected)

    def _in_bounds(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return True  # a word such as auto: its type says what it may be
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )


_NO_RULE = Rule()


def rule(default: Any, given: Rule | None = None, **checks: Any) -> Any:
    """A dataclass field with a default and its ``Rule``, ``given`` or made of ``checks``:
    ``lr: float = rule(1e-3, gt=0, expected="a positive learning rate such as 1e-3")``."""
    return field(default=default, metadata={_RULE: given or Rule(**checks)})


def _names_a_path(value: str) -> bool:
    """Not empty or blank (that would mean the current directory), no NUL byte (no file
    system takes one)."""
    return bool(value.strip()) and "\0" not in value


# The rule of a key naming a file or folder: ``root: str | None = rule(None, PATH)``.
PATH = Rule(test=_names_a_path, expected="a path, not an empty string (nor blanks or a NUL byte)")


def _rule(f: dataclasses.Field) -> Rule:
    return f.metadata.get(_RULE, _NO_RULE)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Every section by its key prefix (``train``, ``search.confirm``): the schema of a study file.
_SECTIONS: dict[str, type[Section]] = {}


class Section:
    """A config section: a frozen dataclass that converts and checks itself when built."""

    SECTION: ClassVar[str] = ""  # the key prefix in messages: "train" -> "train.lr"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SECTIONS[cls.SECTION] = cls

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        hints = _hints(type(self))
        for f in fields:  # the types first, then the values, then the rules between keys
            key = f"{self.SECTION}.{f.name}"
            value = _convert(getattr(self, f.name), hints[f.name], key, _rule(f).at_most)
            object.__setattr__(self, f.name, value)
        for f in fields:
            _rule(f).check(getattr(self, f.name), f"{self.SECTION}.{f.name}")
        self.validate()

    def validate(self) -> None:
        """Rules between keys; each key's type and rule are checked already."""


def build_section(cls: type, raw: Any, section: str) -> Any:
    """The dataclass ``cls`` made from the mapping ``raw`` (None: all defaults), refusing a
    key it does not have; a ``Section`` checks its values when it is built."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{section}: expected a mapping of keys, got {type(raw).__name__} {show(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():  # in the order given: the first bad key is reported
        if key not in fields:
            raise ConfigError(
                f"unknown key {section}.{show_key(key)}; the keys of {section} are: "
                + ", ".join(fields)
                + did_you_mean(str(key), list(fields))
            )
        hint = _hints(cls)[key]
        kwargs[key] = _convert(value, hint, f"{section}.{key}", _rule(fields[key]).at_most)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the type ``hint`` and checked against the rule of ``key``, a
    section's dotted key such as ``train.epochs`` (no rule when it names no field)."""
    section, _, name = key.rpartition(".")
    cls = _SECTIONS.get(section)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    key_rule = _rule(fields[name]) if name in fields else _NO_RULE
    value = _convert(value, hint, key, key_rule.at_most)
    key_rule.check(value, key)
    return value


def _convert(value: Any, hint: Any, key: str, at_most: int | None = None) -> Any:
    """Check ``value`` against the type ``hint``; convert where it is lossless."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _convert(value, arg, key, at_most)
            except ConfigError:
                pass
        raise ConfigError(
            f"{key}: got {show(value)}, expected " + " or ".join(map(_describe, options))
        )
    if origin is Literal:
        require(value in args, key, value, _describe(hint))
        return value
    if origin is dict:
        require(isinstance(value, Mapping), key, value, "a mapping of keys")
        return {k: _convert(v, args[1], f"{key}.{show_key(k)}") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        require(isinstance(value, list | tuple), key, value, "a list such as [400]")
        return tuple(_convert(v, args[0], key, at_most) for v in value)
    if hint is bool:
        require(isinstance(value, bool), key, value, "true or false")
        return value
    if hint is int:
        return _integer(value, key, at_most)
    if hint is float:
        return _number(value, key)
    if hint is str:
        require(isinstance(value, str), key, value, "a string")
        return value
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build_section(hint, value, key)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug, not user input


def _integer(value: Any, key: str, at_most: int | None) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    require(whole and not isinstance(value, bool), key, value, "an integer")
    value = int(value)
    if at_most is not None:
        require(value <= at_most, key, value, f"at most {at_most}")
    require(-_INT64 <= value < _INT64, key, value, "an integer that fits in 64 bits")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string; accept it as the number it means.
            value = float(value)
        except ValueError:
            pass
    require(isinstance(value, int | float) and not isinstance(value, bool), key, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    require(math.isfinite(number), key, value, "a finite number")
    return number


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
