"""The marker file: how vae_study knows a folder is one it made, and of which kind.

A folder vae_study may delete or rewrite (``fit --fresh``, a report rebuilt) is one that it
made and marked: it holds ``MARKER_FILE``, a JSON object ``{"tool": "vae_study", "kind":
<kind>, "format": 1}``. Anything else, a user's folder or another tool's, is refused with one
line naming the file in the way, before anything is written. A folder written by a vae_study
that did not mark its folders yet is recognised by its exact file set (the caller's
``legacy`` test) and marked on first touch.

Nothing here imports torch, Ray or Optuna.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from vae_study.errors import ConfigError

MARKER_FILE = "vae_study.json"
TOOL = "vae_study"
FORMAT = 1
FIT = "fit"  # a fit folder: config.yaml, metrics.jsonl, final.json, checkpoint/
REPORT = "report"  # a report folder: index.html, summary.md, figures, results.csv
STUDY = "study"  # a study folder: study.yaml, optuna.db, trials/, results.csv, ...
MAX_MARKER_BYTES = 4096


def write(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` (made if missing) as a ``kind`` folder of vae_study, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"tool": TOOL, "kind": kind, "format": FORMAT}) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MARKER_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / MARKER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def kind_of(folder: str | Path) -> str | None:
    """The kind ``folder``'s marker names; None if it has no marker. A marker that is not a
    small regular file holding vae_study's JSON object is the string ``"foreign"``."""
    path = Path(folder) / MARKER_FILE
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return "foreign"
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MARKER_BYTES:
        return "foreign"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "foreign"
    if not isinstance(value, dict) or value.get("tool") != TOOL:
        return "foreign"
    if value.get("format") != FORMAT or not isinstance(value.get("kind"), str):
        return "foreign"
    return value["kind"]


def check_owned(folder: str | Path, kind: str, *, legacy: Callable[[Path], bool], fix: str) -> None:
    """Refuse ``folder`` unless vae_study may write into (or delete) it as a ``kind`` folder:
    it does not exist, is an empty folder, holds a ``kind`` marker, or has no marker and
    ``legacy(folder)`` recognises it by its file set. The ``ConfigError`` is one line naming
    the file in the way and ``fix`` (what to give instead)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (it is a file in the way); {fix}")
    found = kind_of(folder)
    if found == kind:
        return
    if found is not None:
        what = "another tool's" if found == "foreign" else f"a vae_study {found} folder's"
        raise ConfigError(
            f"{folder} is not a {kind} output folder of vae_study: "
            f"{folder / MARKER_FILE} is {what} marker, in the way; {fix}"
        )
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"{folder} cannot be listed ({exc.strerror}); {fix}") from None
    if not entries or legacy(folder):
        return
    raise ConfigError(
        f"{folder} is not a {kind} output folder of vae_study (no {MARKER_FILE}): "
        f"{folder / entries[0]} is in the way; {fix}"
    )
