"""A study folder written by an older vae_study, whose record was Ray Tune's experiment:
brought into the record's layout once, so the driver resumes it like any other.

Reads the older trials' torch checkpoints (the epochs they trained), so it lives above the
core and the record; the record itself only reads what this writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.errors import CheckpointError, StudyError
from vae_study.files import write_json
from vae_study.records import results as R
from vae_study.records.layout import FINISHED, holds_state
from vae_study.records.record import INFO_LEGACY, INFO_TRIAL
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY
from vae_study.records.stage import Stage
from vae_study.records.tables import LEGACY_TABLE, int_or_none, is_missing
from vae_study.run_files import CHECKPOINT_DIR, METRICS_FILE


def is_legacy(stage: Stage) -> bool:
    """Whether the stage's folder has an older vae_study's results but no ``trials/``."""
    layout = stage.layout
    return layout.results_file.is_file() and not layout.trials_dir.is_dir()


def import_legacy(study: Any, stage: Stage) -> int:
    """Make an older vae_study's stage folder resumable from the record: each member of its
    results.csv gets its member file (its row, kept as it was), and an unfinished member
    with a checkpoint gets a copy of it in its fit folder, so it continues from there.
    Returns the number of members imported. A table that cannot be read is refused."""
    layout = stage.layout
    try:
        table = R.read_results(layout.results_file).to_dict("records")
    except CheckpointError as exc:
        raise StudyError(
            f"{exc}; this folder was written by an older vae_study, whose table is its only "
            "record of the finished trials: restore it, or start over with --fresh"
        ) from None
    staging = layout.trials_dir.with_name(layout.trials_dir.name + ".importing")
    if staging.exists():
        shutil.rmtree(staging)  # ours: an import cut short before its rename
    count = 0
    for row in table:
        cid, r = int_or_none(row.get(CONFIG_KEY)), int_or_none(row.get(REPLICATE_KEY))
        if cid is None:
            cid = int_or_none(row.get("optuna_trial"))
        if cid is None:
            continue
        r = r or 0
        rel_dir = layout.record_dir(cid, r).relative_to(layout.trials_dir)
        rel_file = layout.record_file(cid, r).relative_to(layout.trials_dir)
        clean = {k: v for k, v in row.items() if not is_missing(v)}
        fields: dict[str, Any] = {INFO_TRIAL: clean.get("trial_id")}
        if row.get("status") in FINISHED:
            fields[INFO_LEGACY] = clean
        ckpt = clean.get("checkpoint")  # finished or not: a configuration run again needs it
        if isinstance(ckpt, str) and holds_state(Path(ckpt)):
            _import_checkpoint(Path(ckpt), staging / rel_dir, INFO_LEGACY not in fields)
        write_json(staging / rel_file, fields)
        count += 1
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copy2(layout.results_file, staging / LEGACY_TABLE)
    staging.rename(layout.trials_dir)  # the import appears whole, or not at all
    return count


def _import_checkpoint(source: Path, folder: Path, unfinished: bool) -> None:
    """An older trial's checkpoint as a fit folder holds one: the checkpoint and, for a
    member that will train on (``unfinished``), the epochs it has trained in metrics.jsonl
    (its epoch in the record; a finished member keeps its imported row). A checkpoint that
    cannot be read is copied as it is: its member then fails naming it, as in any study."""
    from vae_study.core.checkpoint import load
    from vae_study.files import atomic_write_text

    shutil.copytree(source, folder / CHECKPOINT_DIR)
    if not unfinished:
        return
    try:
        state = load(source)
    except CheckpointError:
        return
    history = [h for h in state.history if h.get(M.EPOCH, 0) <= state.epoch]
    atomic_write_text(folder / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in history))
