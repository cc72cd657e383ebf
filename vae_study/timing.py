"""Where a run's time goes: named phases, timed only when a benchmark asks for them.

With ``VAE_STUDY_TIMINGS`` set to a file, ``phase(name)`` appends one JSON line per phase
run (``{"pid", "phase", "start", "seconds", ...}``, ``start`` in Unix seconds), and
``event`` one line per event; unset, both cost a dictionary lookup. ``bind`` adds fields
(e.g. the Ray trial's id) to every later line of the process. Each line is one ``write`` on
a file opened for appending, so the lines of concurrent processes do not interleave.

The file is a benchmark's measurement, not part of any study's record. Standard library
only: the core (torch) and the study layer (Ray) both use it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV = "VAE_STUDY_TIMINGS"

_bound: dict[str, Any] = {}


def enabled() -> bool:
    """Whether phases are being written (``VAE_STUDY_TIMINGS`` names a file)."""
    return bool(os.environ.get(ENV))


def bind(**fields: Any) -> None:
    """Fields every later line of this process carries (None removes one)."""
    for key, value in fields.items():
        if value is None:
            _bound.pop(key, None)
        else:
            _bound[key] = value


def event(name: str, **fields: Any) -> None:
    """One line for ``name`` at this moment (no duration)."""
    if enabled():
        _write({"event": name, "start": time.time(), **fields})


@contextmanager
def phase(name: str, **fields: Any) -> Iterator[None]:
    """Time the block as phase ``name``; the line is written when the block ends, also when
    it raises (with ``"raised": true``)."""
    if not enabled():
        yield
        return
    start, t0 = time.time(), time.perf_counter()
    raised = True
    try:
        yield
        raised = False
    finally:
        line = {"phase": name, "start": start, "seconds": time.perf_counter() - t0, **fields}
        if raised:
            line["raised"] = True
        _write(line)


def _write(line: dict[str, Any]) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    data = (json.dumps({"pid": os.getpid(), **_bound, **line}, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines a run wrote to ``path``, in order (a torn last line is left out)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for text in f:
            try:
                out.append(json.loads(text))
            except ValueError:
                continue
    return out
