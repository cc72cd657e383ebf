"""The study's record: what a study must never lose, in files the study writes itself.

- ``optuna.db`` (SQLite, transactional) is the search record: every configuration the study
  asked for, its parameters, its state (RUNNING until its result is told) and its value. The
  confirmation stage has an Optuna study of its own in the same file (``confirm_stage``).
- Each member (a seed of a configuration) has a folder under the stage's ``trials/``
  (``StudyLayout.record_dir``): a ``fit`` folder, whose ``checkpoint/`` is written atomically
  after every epoch, with ``metrics.jsonl`` and ``final.json``; and beside it a small JSON
  file (``StudyLayout.record_file``) with what the results table shows that Optuna does not
  hold: the node, device, fusion, wall time, the Ray trial, the attempts and the error.

``results.csv`` and ``configs.csv`` are views of those two, rebuilt by ``rebuild`` at any
time: a deleted or cut-short table is simply written again. Ray's experiment state is Ray's
cache: nothing here reads it. No Ray and no torch here.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.errors import CheckpointError
from vae_study.files import MAX_RECORD_JSON_BYTES, MAX_RECORD_LINES_BYTES, read_bounded, write_json
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    STOPPED,
    StudyLayout,
    holds_state,
)
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY, SEED_KEY, replicate_seed
from vae_study.run_files import CHECKPOINT_DIR, FINAL_FILE, METRICS_FILE, STATE_FILE

# Optuna user attributes written by vae_study.
INTERRUPTED_ATTR = "vae_study_interrupted"  # a trial running when the study was paused
POINT_ATTR = "vae_study_point"  # the index of the search.points_to_evaluate entry it is
CONFIG_ID_ATTR = "vae_study_config_id"  # a confirmation trial: the configuration it confirms
SELECTED_ATTR = "vae_study_selected"  # the confirmation study: the configurations chosen

# The member file's keys (a JSON object; every key optional).
INFO_TRIAL = "trial_id"  # the Ray trial that trained it last
INFO_ERROR = "error"  # why it failed: a divergence, or the trial's error
INFO_ATTEMPTS = "attempts"  # one {pid, from_epoch} per start of training
INFO_WALL = "wall_s"  # seconds its Ray trials ran, all attempts together
INFO_LEGACY = "legacy_row"  # a member imported from a folder of an older vae_study

# Where rows of a study folder written by an older vae_study are kept, once imported.
LEGACY_TABLE = "legacy_results.csv"
LEGACY_WORDS = (
    "written by an older vae_study (Ray Tune held its record): its finished trials were "
    "imported from results.csv"
)


@dataclass(frozen=True)
class Stage:
    """One experiment of a study: the search, or its confirmation.

    folder: where its tables and ``trials/`` are (the study folder, or ``confirm/``);
    optuna_name: its Optuna study in the study's ``optuna.db``; replicates: seeds per
    configuration; seed_offset: added to every replicate's seed (``replicate_seed``).
    Both paths are made absolute here: a trial runs in a Ray worker whose working
    directory is not the driver's (Ray changes it to the trial's folder).
    """

    root: Path  # the study folder (its optuna.db)
    folder: Path
    optuna_name: str
    replicates: int
    seed_offset: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        object.__setattr__(self, "folder", Path(self.folder).absolute())

    @property
    def layout(self) -> StudyLayout:
        return StudyLayout(self.folder)

    @property
    def is_confirmation(self) -> bool:
        return self.folder != self.root


def search_stage(study: Any, folder: Path) -> Stage:
    return Stage(Path(folder), Path(folder), study.name, int(study.search.replicates), 0)


def confirm_stage(study: Any, folder: Path) -> Stage:
    confirm = study.search.confirm
    if confirm is None:
        raise ValueError("the study has no search.confirm section")
    return Stage(
        Path(folder),
        StudyLayout(folder).confirm_dir,
        f"{study.name}:confirm",
        int(confirm.replicates),
        int(study.search.replicates),  # fresh seeds: none the search selected on
    )


def storage(stage: Stage) -> Any:
    """The Optuna storage of the study (SQLite: every write is a transaction)."""
    import optuna

    return optuna.storages.RDBStorage(StudyLayout(stage.root).storage_url)


def optuna_trials(stage: Stage) -> list[Any]:
    """The stage's Optuna trials (FrozenTrials, by number); none when it has no study yet."""
    import optuna

    try:
        study = optuna.load_study(study_name=stage.optuna_name, storage=storage(stage))
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def config_id(stage: Stage, trial: Any) -> int:
    """The configuration an Optuna trial of the stage is: its own number in the search, the
    search configuration it confirms in the confirmation."""
    if stage.is_confirmation:
        return int(trial.user_attrs[CONFIG_ID_ATTR])
    return int(trial.number)


# ---------------------------------------------------------------------------------------
# A member's files.


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


# ---------------------------------------------------------------------------------------
# The views: results.csv (one row per member) and configs.csv (one per configuration).


def member_row(
    study: Any, stage: Stage, trial: Any, member: Member, *, live: bool
) -> dict[str, Any]:
    """The results.csv row of one member of the Optuna trial ``trial``."""
    import optuna

    from vae_study.config.optuna_space import decode_params

    legacy = member.info.get(INFO_LEGACY)
    if legacy and not member.started:
        return dict(legacy)  # imported from an older vae_study's table, as it was
    params = decode_params(study.search.space, dict(trial.params))
    base_seed = params.get("train.seed", study.base.train.seed)
    info = member.info
    row: dict[str, Any] = {
        "trial_id": info.get(INFO_TRIAL),
        "optuna_trial": trial.number,
        R.MEMBER_KEY: info.get(R.MEMBER_KEY, member.replicate),
        CONFIG_KEY: member.config_id,
        REPLICATE_KEY: member.replicate,
        SEED_KEY: replicate_seed(int(base_seed), member.replicate, stage.seed_offset),
        **params,
        M.EPOCH: member.epoch if member.started else None,
        "wall_s": info.get(INFO_WALL),
        "node": info.get(R.NODE_KEY),
        R.DEVICE_KEY: info.get(R.DEVICE_KEY),
        R.FUSION_KEY: info.get(R.FUSION_KEY),
        R.GPU_IDS_KEY: info.get(R.GPU_IDS_KEY),
    }
    for key in (*R.ROW_METRICS, M.TOTAL_SECONDS):
        row[key] = member.value(key) if key != M.TRAIN_EXAMPLES else info.get(key)
    state = trial.state
    States = optuna.trial.TrialState
    if member.error:
        row["status"], row[R.ERROR_KEY] = FAILED, member.error
    elif member.completed:
        row["status"] = COMPLETED
    elif state == States.PRUNED:
        row["status"] = STOPPED
    elif state == States.FAIL:
        row["status"] = FAILED
        row[R.ERROR_KEY] = "failed: another replicate of its configuration failed"
    elif state == States.COMPLETE:
        row["status"] = COMPLETED  # told complete (an older vae_study): its own numbers
    elif live:
        row["status"] = RUNNING
    else:
        row["status"] = INTERRUPTED if member.started else PENDING
    ckpt = member.folder / CHECKPOINT_DIR
    if holds_state(ckpt):
        row["checkpoint"] = str(ckpt)
    return row


def rows(study: Any, stage: Stage, live: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Every member row of the stage, configuration by configuration in Optuna's order.
    ``live``: the Optuna trial numbers whose Ray trial is running now."""
    live = set(live)
    out = []
    for trial in optuna_trials(stage):
        if stage.is_confirmation and CONFIG_ID_ATTR not in trial.user_attrs:
            continue
        cid = config_id(stage, trial)
        for m in members(stage, cid):
            out.append(member_row(study, stage, trial, m, live=trial.number in live))
    # Finished members of an older vae_study's table that no Optuna trial of the stage
    # names (its confirmation had no Optuna study): kept as they were.
    legacy = stage.layout.trials_dir / LEGACY_TABLE
    if legacy.is_file():
        seen = {(r.get(CONFIG_KEY), r.get(REPLICATE_KEY)) for r in out}
        for row in R.read_results(legacy).to_dict("records"):
            key = (int_or_none(row.get(CONFIG_KEY)), int_or_none(row.get(REPLICATE_KEY)) or 0)
            if key not in seen and row.get("status") in R.FINISHED:
                out.append({k: v for k, v in row.items() if not is_missing(v)})
    return out


def rebuild(study: Any, stage: Stage, live: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Write the stage's results.csv and configs.csv from the record; returns the rows."""
    from vae_study.records.replicates import write_configs

    table = rows(study, stage, live)
    param_keys = [p.key for p in study.search.space]
    objectives = [(o.metric, o.mode) for o in study.search.objectives]
    R.mark_pareto_configs(table, objectives, stage.replicates)
    layout = stage.layout
    layout.folder.mkdir(parents=True, exist_ok=True)
    R.write_results(layout.results_file, table, param_keys)
    write_configs(
        layout.configs_file,
        table,
        param_keys=param_keys,
        metrics=R.CONFIG_METRICS,
        replicates=stage.replicates,
    )
    return table


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def int_or_none(value: Any) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None
