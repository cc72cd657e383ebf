"""The results table of a study: ``results.csv``, one row per member, written atomically.

A view of the study's record (``tables.rebuild`` writes it), read by the report without Ray.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.errors import CheckpointError
from vae_study.files import MAX_TABLE_BYTES, atomic_write_text, read_bounded
from vae_study.records.layout import COMPLETED, STATUSES, as_number
from vae_study.records.replicates import (
    CONFIG_KEY,
    MEMBER_KEY,
    REPLICATE_KEY,
    SEED_KEY,
    aggregate,
    config_of,
)

# Keys the trainable adds to its reports.
DIVERGED_KEY = "diverged"
ERROR_KEY = "error"
# A trial that could not write its checkpoint (a full disk) reports the path here and ends:
# the study stops, its configuration stays open in optuna.db.
DISK_FULL_KEY = "disk_full"
NODE_KEY = "node"  # the Ray node id a trial ran on, in every report
DEVICE_KEY = "device"  # the torch device a trial trained on (cpu, cuda)
# How a trial's members trained (fused.fusion_mode): stacked, vmap, sequential; alone: one.
FUSION_KEY = "fusion"
GPU_IDS_KEY = "gpu_ids"  # the GPUs Ray gave the trial, as CUDA_VISIBLE_DEVICES names them
OPTUNA_TRIAL_KEY = "_optuna_trial"  # added to each trial's config by the searcher

# Ray trial config keys (the searcher writes them, the trainable reads them): "_pack" lists
# the configurations of a trial that trains several (each {param: value, "_optuna_trial": n,
# "_config_id": id}); "_replicates" and "_seed_offset" override search.replicates and the
# seed offset (the confirmation stage); "_config_id" names the configuration (its member
# folders in the record): the Optuna trial number in the search, the configuration a
# confirmation trial confirms.
PACK_KEY = "_pack"
TRIAL_REPLICATES_KEY = "_replicates"
SEED_OFFSET_KEY = "_seed_offset"
CONFIG_ID_KEY = "_config_id"
# A pack's report carries each member's metrics as member_<j>/<metric> and, in a trial of
# several configurations, each configuration's replicate means as config_<i>/<metric>; a
# trial of one configuration reports its means as the top-level metrics.
MEMBER_PREFIX = "member_"
CONFIG_PREFIX = "config_"


def member_key(member: int, metric: str) -> str:
    return f"{MEMBER_PREFIX}{member}/{metric}"


def config_key(config: int, metric: str) -> str:
    return f"{CONFIG_PREFIX}{config}/{metric}"


def sub_result(result: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    """The keys of ``result`` under ``prefix`` (``member_3/``), without it."""
    return {k[len(prefix) :]: v for k, v in (result or {}).items() if k.startswith(prefix)}


def trial_configs(config: dict[str, Any]) -> list[tuple[dict[str, Any], Any, Any]]:
    """(searched params as Optuna encodes them, configuration id, Optuna trial number or
    None) of each configuration a Ray trial trains, in member order: its ``_pack``, or the
    trial's flat config."""
    out = []
    for entry in config.get(PACK_KEY) or [config]:
        params = {k: v for k, v in entry.items() if not k.startswith("_")}
        number = entry.get(OPTUNA_TRIAL_KEY)
        out.append((params, entry.get(CONFIG_ID_KEY, config.get(CONFIG_ID_KEY, number)), number))
    return out


def config_results(
    config: dict[str, Any], result: dict[str, Any] | None
) -> list[tuple[Any, dict[str, Any]]]:
    """(Optuna trial number, the configuration's result) of each configuration of a Ray
    trial whose last report is ``result``: the top-level metrics of a one-configuration
    trial, ``config_<i>/...`` of each configuration of a pack."""
    entries = config.get(PACK_KEY) or [config]
    numbers = [entry.get(OPTUNA_TRIAL_KEY) for entry in entries]
    return list(zip(numbers, split_result(result, len(entries)), strict=True))


def split_result(result: dict[str, Any] | None, n_configs: int) -> list[dict[str, Any]]:
    """Each configuration's part of a trial's report: the report itself for one."""
    if n_configs == 1:
        return [dict(result or {})]
    return [sub_result(result, config_key(i, "")) for i in range(n_configs)]


LEAD_COLUMNS = ["trial_id", "optuna_trial", "status", "pareto"]
# Which member of its trial a row is: one row per member (a trial trains one or more).
MEMBER_COLUMNS = [MEMBER_KEY, CONFIG_KEY, REPLICATE_KEY, SEED_KEY]
# The metrics a row takes from its trial's last report, as they are named there.
ROW_METRICS = (
    M.TRAIN_EXAMPLES,
    M.VAL_NEG_ELBO,
    M.VAL_RATE,
    M.VAL_DISTORTION,
    *M.FINAL_VAL_SCALARS,
    *M.TEST_SCALARS,
    M.TEST_NLL_EXAMPLES,
    M.TEST_KL_PER_DIM,
)
TAIL_COLUMNS = [
    M.EPOCH,
    "wall_s",
    M.TOTAL_SECONDS,
    "node",
    DEVICE_KEY,
    GPU_IDS_KEY,
    FUSION_KEY,
    *ROW_METRICS,
    "checkpoint",
    ERROR_KEY,
]


# The numbers of a row that configs.csv averages over a configuration's replicates.
CONFIG_METRICS = (
    M.VAL_NEG_ELBO,
    M.VAL_RATE,
    M.VAL_DISTORTION,
    *M.FINAL_VAL_SCALARS,
    *M.TEST_SCALARS,
)


def columns(param_keys: Sequence[str]) -> list[str]:
    return [*LEAD_COLUMNS, *MEMBER_COLUMNS, *param_keys, *TAIL_COLUMNS]


def mark_pareto(rows: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, str]]) -> None:
    """Set ``pareto`` on each row: a completed trial no other completed trial dominates on
    the study's objectives (with one objective: the best trial(s))."""
    from vae_study.records.pareto import pareto_front

    done = [i for i, r in enumerate(rows) if r.get("status") == COMPLETED]
    points = [[as_number(rows[i].get(m)) for m, _ in objectives] for i in done]
    front = {done[j] for j in pareto_front(points, [mode for _, mode in objectives])}
    for i, row in enumerate(rows):
        row["pareto"] = i in front


def mark_pareto_configs(
    rows: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, str]], replicates: int
) -> None:
    """Set ``pareto`` on each member row: its configuration is on the front of the
    configurations' replicate means (a completed configuration: all replicates completed)."""
    metrics = [m for m, _ in objectives]
    configs = aggregate(rows, param_keys=[], metrics=metrics, replicates=replicates)
    mark_pareto(configs, objectives)
    front = {c[CONFIG_KEY] for c in configs if c["pareto"]}
    for row in rows:
        row["pareto"] = config_of(row) in front


def write_results(
    path: Path,
    rows: Sequence[dict[str, Any]],
    param_keys: Sequence[str],
    objectives: Sequence[tuple[str, str]] = (),
) -> None:
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
        text = read_bounded(path, MAX_TABLE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"no results table at {path}") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    _check_table(path, text)
    try:
        return pd.read_csv(
            io.StringIO(text), dtype={"trial_id": str, "node": str, GPU_IDS_KEY: str, "status": str}
        )
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
    if header[: len(LEAD_COLUMNS)] != LEAD_COLUMNS:
        raise _damaged(
            path,
            f"its header does not start with {','.join(LEAD_COLUMNS)} "
            f"(got {_abbrev(','.join(header))!r})",
        )
    status_col = LEAD_COLUMNS.index("status")
    for i, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise _damaged(path, f"trial row {i} has {len(row)} fields, the header {len(header)}")
        if row[status_col] not in STATUSES:
            raise _damaged(
                path,
                f"trial row {i} has the status "
                f"{_abbrev(row[status_col])!r}, not one of "
                f"{', '.join(STATUSES)}",
            )


def _abbrev(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged ({why}); it is rewritten from the study's "
        "trials when the study runs again (the same 'vae_study run' "
        "command)"
    )


def parse_kl_per_dim(cell: Any) -> list[float]:
    if not isinstance(cell, str) or not cell.strip():
        return []
    return [float(v) for v in cell.split()]


def first_error_line(trial: Any) -> str:
    """The last line of a Ray trial's error (what the results table shows of it).

    Tune writes the error file on the driver (``trial.error_file``) when the trial fails
    and copies it to the storage path (what ``trial.get_error`` reads) only at its next
    sync, so the driver's copy is read first."""
    text = None
    try:
        local = trial.error_file
        if local and Path(local).is_file():
            text = Path(local).read_text(errors="replace")
        if not text:
            text = trial.get_error()
    except Exception:
        text = None
    text = str(text) if text else "the trial failed (see its error.txt in the tune folder)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else text
