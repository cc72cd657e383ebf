"""Seed replicates: one row per member, one row per configuration with mean and standard error.

A study with ``search.replicates: R`` trains every configuration with R seeds. Replicate r has
the seed ``train.seed + r`` in every configuration, so a comparison between two configurations
is paired (the same initial weights' stream, batch order and noise). ``results.csv`` keeps one
row per member; ``configs.csv`` (``aggregate``) one row per configuration: each metric's mean
over the configuration's completed members and its standard error, the sample standard
deviation (n - 1) over sqrt(n). With fewer than two completed members the standard error is
absent, not 0: one seed says nothing about the spread.

No torch, Ray or Optuna here: the driver writes the table, the report reads it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vae_study.files import atomic_write_text
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    STOPPED,
    as_number,
)

CONFIG_KEY = "config_id"  # the configuration a member belongs to (its Optuna trial number)
REPLICATE_KEY = "replicate"  # 0 .. R-1
SEED_KEY = "seed"  # the member's train.seed
MEMBER_KEY = "member"  # the member's index in its Ray trial, 0 .. M-1
N_REPLICATES_KEY = "n_replicates"
N_FINISHED_KEY = "n_finished"
SE_SUFFIX = "_se"

# A configuration's status from its members': failed if any member failed (a configuration
# with a diverged seed is a failed configuration, never the mean of its good seeds), completed
# when all R completed, else the least advanced member's status, in this order.
_PROGRESS = (PENDING, RUNNING, STOPPED, COMPLETED)


def replicate_seed(base_seed: int, replicate: int, offset: int = 0) -> int:
    """The ``train.seed`` of replicate ``replicate``: the same in every configuration.

    offset: the confirmation stage passes ``search.replicates``, so its seeds were never used
    to select the configurations it confirms."""
    if replicate < 0 or offset < 0:
        raise ValueError(f"replicate {replicate} and offset {offset} must be >= 0")
    return int(base_seed) + int(offset) + int(replicate)


def se_key(metric: str) -> str:
    """The column of ``metric``'s standard error in the per-configuration table."""
    return f"{metric}{SE_SUFFIX}"


def mean_se(values: Iterable[Any]) -> tuple[float, float | None, int]:
    """(mean, standard error, n) over the finite numbers in ``values``.

    The standard error is the sample standard deviation (ddof 1) over sqrt(n); None with
    n < 2. The mean is nan with n == 0."""
    xs = [v for v in (as_number(x) for x in values) if math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return math.nan, None, 0
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None, n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n), n


def config_of(row: dict[str, Any]) -> Any:
    """The configuration id of a member row: its ``config_id``, else its trial (a table
    written before replicates existed has one row per trial, each its own configuration)."""
    value = row.get(CONFIG_KEY)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"trial:{row.get('trial_id')}"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _status(statuses: Sequence[str], replicates: int) -> str:
    if FAILED in statuses:
        return FAILED
    if len(statuses) == replicates and all(s == COMPLETED for s in statuses):
        return COMPLETED
    known = [s for s in statuses if s in _PROGRESS]
    if len(statuses) < replicates or not known:
        return PENDING if not any(s == RUNNING for s in statuses) else RUNNING
    return min(known, key=_PROGRESS.index)


def aggregate(
    rows: Sequence[dict[str, Any]],
    *,
    param_keys: Sequence[str],
    metrics: Sequence[str],
    replicates: int,
) -> list[dict[str, Any]]:
    """One dict per configuration, in the order configurations first appear in ``rows``.

    Each holds ``config_id``, the params of its first row, ``n_replicates`` (= replicates),
    ``n_finished`` (its completed members), ``status`` (see ``_status``), and for each metric
    the mean over its members and ``se_key(metric)`` (None with fewer than two seeds): only
    for a completed configuration, every one of its replicates completed. A configuration
    short of a seed (failed, running, stopped) has None: a mean of the seeds that survived
    is a biased number, never shown as the configuration's.
    """
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_of(row), []).append(row)
    out = []
    for config, members in groups.items():
        done = [m for m in members if m.get("status") == COMPLETED]
        entry: dict[str, Any] = {CONFIG_KEY: config}
        entry.update({k: members[0].get(k) for k in param_keys})
        entry[N_REPLICATES_KEY] = replicates
        entry[N_FINISHED_KEY] = len(done)
        entry["status"] = _status([str(m.get("status")) for m in members], replicates)
        complete = entry["status"] == COMPLETED
        for metric in metrics:
            mean, se, n = mean_se(m.get(metric) for m in done)
            entry[metric] = mean if n and complete else None
            entry[se_key(metric)] = se if complete else None
        out.append(entry)
    return out


def config_columns(param_keys: Sequence[str], metrics: Sequence[str]) -> list[str]:
    cols = [CONFIG_KEY, "status", N_FINISHED_KEY, N_REPLICATES_KEY, *param_keys]
    for metric in metrics:
        cols += [metric, se_key(metric)]
    return cols


def write_configs(
    path: Path,
    rows: Sequence[dict[str, Any]],
    *,
    param_keys: Sequence[str],
    metrics: Sequence[str],
    replicates: int,
) -> list[dict[str, Any]]:
    """Write the per-configuration table of member ``rows`` to ``path`` as CSV, atomically;
    returns its rows."""
    import pandas as pd

    table = aggregate(rows, param_keys=param_keys, metrics=metrics, replicates=replicates)
    cols = config_columns(param_keys, metrics)
    frame = pd.DataFrame([{c: _cell(r.get(c)) for c in cols} for r in table], columns=cols)
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(Path(path), buf.getvalue())
    return table


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_configs(path: Path):
    """The per-configuration table as a pandas DataFrame (absent standard errors are NaN)."""
    import pandas as pd

    from vae_study.errors import CheckpointError

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"status": str})
    except FileNotFoundError:
        raise CheckpointError(f"no per-configuration table at {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({str(exc).splitlines()[0]}); it is rewritten from "
            "results.csv when the study runs again"
        ) from None
    bad = sorted(set(frame.get("status", [])) - set(STATUSES))
    if bad:
        raise CheckpointError(f"{path} is damaged (unknown status {bad[0]!r})")
    return frame
