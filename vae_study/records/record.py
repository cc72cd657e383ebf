"""The training record: each member's files under a stage's ``trials/``.

A member is a seed of a configuration. It has a folder (``StudyLayout.record_dir``): a
``fit`` folder, whose ``checkpoint/`` is written atomically after every epoch, with
``metrics.jsonl`` and ``final.json``; and beside it a small JSON file
(``StudyLayout.record_file``, its info) with what the results table shows that Optuna does
not hold: the node, device, fusion, wall time, the Ray trial, the attempts and the error.
With ``optuna.db`` (``stage``) it is what a study must never lose; the tables are views of
both (``tables.rebuild``). Ray's experiment state is Ray's cache: nothing here reads it. No
Ray and no torch here.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.errors import CheckpointError
from vae_study.files import MAX_RECORD_JSON_BYTES, MAX_RECORD_LINES_BYTES, read_bounded, write_json
from vae_study.records.stage import Stage
from vae_study.run_files import CHECKPOINT_DIR, FINAL_FILE, METRICS_FILE, STATE_FILE

# The member file's keys (a JSON object; every key optional).
INFO_TRIAL = "trial_id"  # the Ray trial that trained it last
INFO_ERROR = "error"  # why it failed: a divergence, or the trial's error
INFO_ATTEMPTS = "attempts"  # one {pid, from_epoch} per start of training
INFO_WALL = "wall_s"  # seconds its Ray trials ran, all attempts together
INFO_LEGACY = "legacy_row"  # a member imported from a folder of an older vae_study


def read_info(path: Path) -> dict[str, Any]:
    """A member file's content ({} when it is missing; a damaged one is an error naming it:
    it is only ever replaced whole)."""
    try:
        data = read_bounded(path, MAX_RECORD_JSON_BYTES)
    except FileNotFoundError:
        return {}
    try:
        info = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}); move it away and run the same command again "
            "(that member then trains again from its checkpoint)"
        ) from None
    return info if isinstance(info, dict) else {}


def update_info(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a member file, written atomically; returns the new content."""
    info = {**read_info(path), **fields}
    write_json(path, info)
    return info


def add_attempt(path: Path, pid: int, from_epoch: int, **fields: Any) -> None:
    """Record one start of a member's training (which process, from which epoch)."""
    info = read_info(path)
    attempts = list(info.get(INFO_ATTEMPTS) or [])
    attempts.append({"pid": int(pid), "from_epoch": int(from_epoch)})
    update_info(path, **fields, **{INFO_ATTEMPTS: attempts})


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a JSON-lines file (a line cut short by a crash is skipped)."""
    try:
        lines = read_bounded(path, MAX_RECORD_LINES_BYTES).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(read_bounded(path, MAX_RECORD_JSON_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class Member:
    """What the record holds of one member."""

    config_id: int
    replicate: int
    folder: Path  # its fit folder
    info: dict[str, Any]
    history: list[dict[str, Any]]  # one row per epoch trained (metrics.jsonl)
    final: dict[str, Any]  # final.json: val/nll and the test metrics; {} before

    @property
    def epoch(self) -> int:
        return int(self.history[-1][M.EPOCH]) if self.history else 0

    @property
    def completed(self) -> bool:
        value = self.final.get(M.TEST_NEG_ELBO)
        return isinstance(value, int | float) and math.isfinite(value)

    @property
    def error(self) -> str | None:
        error = self.info.get(INFO_ERROR)
        return str(error) if error else None

    @property
    def started(self) -> bool:
        return bool(self.history or self.info.get(INFO_ATTEMPTS))

    def value(self, metric: str) -> Any:
        """A number of the member: from its final metrics, else its last epoch."""
        if metric in self.final:
            return self.final[metric]
        return self.history[-1].get(metric) if self.history else None


def read_member(stage: Stage, config: int, replicate: int) -> Member:
    layout = stage.layout
    folder = layout.record_dir(config, replicate)
    history: dict[int, dict[str, Any]] = {}
    for row in _jsonl(folder / METRICS_FILE):
        if M.EPOCH in row:
            history[int(row[M.EPOCH])] = row  # a resumed member may repeat an epoch
    return Member(
        config_id=config,
        replicate=replicate,
        folder=folder,
        info=read_info(layout.record_file(config, replicate)),
        history=[history[e] for e in sorted(history)],
        final=_json(folder / FINAL_FILE),
    )


def clear_unstarted(stage: Stage, config: int, replicate: int) -> None:
    """Empty the member's fit folder when it holds no checkpoint: a run killed before its
    first epoch ended leaves part of fit's first files (``config.yaml`` without
    ``metrics.jsonl``, a temp file of an atomic write), which ``fit`` would refuse as a
    folder it did not make. Nothing is lost: without a checkpoint the member starts at epoch
    0 whatever the folder holds. The folder is the record's own (``trials/``)."""
    folder = stage.layout.record_dir(config, replicate)
    if folder.is_dir() and not (folder / CHECKPOINT_DIR / STATE_FILE).is_file():
        shutil.rmtree(folder)


def members(stage: Stage, config: int) -> list[Member]:
    return [read_member(stage, config, r) for r in range(stage.replicates)]


# ---------------------------------------------------------------------------------------
# What a configuration's members say about its end (what the searcher tells Optuna).


def outcome(
    stage: Stage, config: int, objectives: Sequence[str]
) -> tuple[str, list[float] | None, str | None]:
    """("complete", the objectives' means over the replicates, None), ("fail", None, the
    first error) or ("open", None, None) when a replicate has neither finished nor failed."""
    ms = members(stage, config)
    failed = [m for m in ms if m.error]
    if failed:
        return "fail", None, failed[0].error
    if not all(m.completed for m in ms):
        return "open", None, None
    values = []
    for metric in objectives:
        xs = [m.value(metric) for m in ms]
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in xs):
            return "fail", None, f"{metric} is not a finite number in every replicate"
        values.append(math.fsum(xs) / len(xs))
    return "complete", values, None
