"""How a config error is worded: ``key: got VALUE, expected WHAT``, with the value cut to a
readable length (no message echoes a huge value whole) and the closest known name offered for
a misspelt one."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from vae_study.errors import ConfigError


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: no message echoes a huge value whole."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # e.g. an integer inside a list too long for str()
        return f"a {type(value).__name__} too large to show"
    if len(text) > limit:
        text = f"{text[: limit - 3]}... ({len(text)} characters)"
    return text


def show_key(key: Any) -> str:
    """A key as typed when it is short and printable, else abbreviated like a value."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 60:
        return key
    return show(key)


def did_you_mean(key: str, names: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the name in ``names`` closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError("KEY: got VALUE, expected EXPECTED")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: got {show(value)}, expected {expected}")
