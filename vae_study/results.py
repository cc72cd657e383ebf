"""The results table of a study: ``results.csv``, one row per trial, written atomically.

Read by the report without Ray; written by the study driver as trials start and finish.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import metrics as M
from .checkpoint import atomic_write_text
from .errors import CheckpointError

RESULTS_FILE = "results.csv"

# Trial statuses, in our words. Ray's TERMINATED covers completed, stopped (by the scheduler)
# and a diverged trial, which is failed here with its reason in the error column.
# Interrupted: running when the study was paused (Ctrl-C); the next run resumes it.
PENDING, RUNNING, COMPLETED, STOPPED, FAILED = (
    "pending", "running", "completed", "stopped", "failed")
INTERRUPTED = "interrupted"
FINISHED = (COMPLETED, STOPPED, FAILED)
STATUSES = (PENDING, RUNNING, *FINISHED)

# Keys the trainable adds to its reports.
DIVERGED_KEY = "diverged"
ERROR_KEY = "error"

LEAD_COLUMNS = ["trial_id", "optuna_trial", "status", "pareto"]
TAIL_COLUMNS = [M.EPOCH, "wall_s", M.TOTAL_SECONDS, "node", M.TRAIN_EXAMPLES,
                M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, *M.FINAL_VAL_SCALARS,
                *M.TEST_SCALARS, M.TEST_NLL_EXAMPLES, M.TEST_KL_PER_DIM, "checkpoint",
                ERROR_KEY]


def columns(param_keys: Sequence[str]) -> list[str]:
    return [*LEAD_COLUMNS, *param_keys, *TAIL_COLUMNS]


def mark_pareto(rows: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, str]]) -> None:
    """Set ``pareto`` on each row: a completed trial no other completed trial dominates on
    the study's objectives (with one objective: the best trial(s))."""
    from .pareto import pareto_front

    done = [i for i, r in enumerate(rows) if r.get("status") == COMPLETED]
    points = [[_number(rows[i].get(m)) for m, _ in objectives] for i in done]
    front = {done[j] for j in pareto_front(points, [mode for _, mode in objectives])}
    for i, row in enumerate(rows):
        row["pareto"] = i in front


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_results(path: Path, rows: Sequence[dict[str, Any]], param_keys: Sequence[str],
                  objectives: Sequence[tuple[str, str]] = ()) -> None:
    """Write ``rows`` (one per trial) as CSV, atomically: never half a file."""
    import pandas as pd

    if objectives:
        mark_pareto(rows, objectives)
    cols = columns(param_keys)
    frame = pd.DataFrame([{c: _cell(row.get(c)) for c in cols} for row in rows], columns=cols)
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(Path(path), buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_results(path: Path):
    """The table as a pandas DataFrame; a damaged file is a ``CheckpointError``.

    Our writer writes whole files (atomically) that end with a newline, so a file cut short
    (a copy interrupted, a disk that filled up) is refused, never read as fewer trials or as
    a completed trial with half its numbers.
    """
    import pandas as pd

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"no results table at {path}") from None
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    _check_table(path, text)
    try:
        return pd.read_csv(io.StringIO(text), dtype={"trial_id": str, "node": str,
                                                     "status": str})
    except (pd.errors.ParserError, ValueError) as exc:
        raise _damaged(path, str(exc).splitlines()[0]) from None


def _check_table(path: Path, text: str) -> None:
    """Raise ``CheckpointError`` unless ``text`` is a whole table as ``write_results`` writes."""
    import csv

    if not text:
        raise _damaged(path, "it is empty")
    if not text.endswith("\n"):
        raise _damaged(path, "it does not end with a newline: it was cut short")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise _damaged(path, f"not CSV: {exc}") from None
    header = rows[0]
    if header[:len(LEAD_COLUMNS)] != LEAD_COLUMNS:
        raise _damaged(path, f"its header does not start with {','.join(LEAD_COLUMNS)} "
                             f"(got {_abbrev(','.join(header))!r})")
    status_col = LEAD_COLUMNS.index("status")
    for i, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise _damaged(path, f"trial row {i} has {len(row)} fields, the header "
                                 f"{len(header)}")
        if row[status_col] not in STATUSES:
            raise _damaged(path, f"trial row {i} has the status "
                                 f"{_abbrev(row[status_col])!r}, not one of "
                                 f"{', '.join(STATUSES)}")


def _abbrev(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged ({why}); it is rewritten from the study's "
                           "trials when the study runs again (the same 'vae_study run' "
                           "command)")


def parse_kl_per_dim(cell: Any) -> list[float]:
    if not isinstance(cell, str) or not cell.strip():
        return []
    return [float(v) for v in cell.split()]
