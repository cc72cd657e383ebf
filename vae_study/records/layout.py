"""The study folder: every name in it, in one place.

A study lives in ``<output.dir>/<name>/`` (``output.dir`` defaults to ``runs``)::

    study.yaml      the resolved study file (what a resume is compared against)
    optuna.db       the search record: every configuration, its state and value (Optuna,
                    SQLite; ``optuna-dashboard sqlite:///.../optuna.db``)
    trials/         the training record (``record``): per configuration (its id) and seed,
      <id>/replicate_<r>/       the member's fit folder: checkpoint/state.pt (atomic),
                                metrics.jsonl, final.json, config.yaml
      <id>/replicate_<r>.json   what the table shows that Optuna does not hold
    results.csv     a view of the record: one row per member, rebuilt at any time
    configs.csv     a view: one row per configuration, means and standard errors
    driver.lock     locked by the driver running the study (one driver per folder)
    vae_study.json  the marker: a study folder vae_study made (``marker``; only such a
                    folder, or an older unmarked study, is resumed or emptied by --fresh)
    tune/           Ray Tune's own experiment folder (its cache: nothing reads it back)
    confirm/        the confirmation stage (search.confirm), laid out like a study folder

The driver writes it, the report and ``study_folder`` read it, the search opens its Optuna
storage and the tests build one by hand, all through ``StudyLayout``. Nothing here imports
torch, Ray or Optuna. The words of a trial's status are here too.

A folder written by an older vae_study has no ``trials/``: its record was Ray Tune's
experiment, with each trial's checkpoints in ``tune/trial_<id>/checkpoint_<n>/`` (a pack's
members in ``member_<m>/`` inside); ``legacy.import_legacy`` brings it into this layout and the
readers below still find those checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study.run_files import CHECKPOINT_DIR, STATE_FILE

STUDY_FILE = "study.yaml"
RESULTS_FILE = "results.csv"
CONFIGS_FILE = "configs.csv"  # one row per configuration: mean and s.e. over its replicates
CONFIRM_DIR = "confirm"  # the confirmation stage: a study folder of its own inside the study
DB_FILE = "optuna.db"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"  # the training record: one folder per configuration and seed
REPLICATE_PREFIX = "replicate_"
LOCK_FILE = "driver.lock"  # held (flock) by the driver running the study: pid and host
TRIAL_PREFIX = "trial_"
MEMBER_PREFIX = "member_"
RESULT_FILE = "result.json"  # Ray's per-trial reports, one JSON object a line
CHECKPOINT_GLOB = "checkpoint_*"  # Ray's checkpoint folders in a trial folder

# Trial statuses, in our words. Ray's TERMINATED covers completed, stopped (by the scheduler)
# and a diverged trial, which is failed here with its reason in the error column.
# Interrupted: running when the study was paused (Ctrl-C); the next run resumes it.
PENDING, RUNNING, COMPLETED, STOPPED, FAILED = (
    "pending",
    "running",
    "completed",
    "stopped",
    "failed",
)
INTERRUPTED = "interrupted"
FINISHED = (COMPLETED, STOPPED, FAILED)
STATUSES = (PENDING, RUNNING, INTERRUPTED, *FINISHED)  # every word results.csv may hold


def trial_dirname(trial_id: str) -> str:
    """The name of a trial's folder in ``tune/`` (Ray's default repeats every parameter)."""
    return f"{TRIAL_PREFIX}{trial_id}"


@dataclass(frozen=True)
class StudyLayout:
    """The paths of one study folder."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @classmethod
    def of(cls, output_dir: str | Path, name: str) -> StudyLayout:
        """The folder of the study ``name`` under ``output_dir`` (``~`` expanded)."""
        return cls(Path(output_dir).expanduser() / name)

    @property
    def study_file(self) -> Path:
        return self.folder / STUDY_FILE

    @property
    def results_file(self) -> Path:
        return self.folder / RESULTS_FILE

    @property
    def configs_file(self) -> Path:
        return self.folder / CONFIGS_FILE

    @property
    def confirm_dir(self) -> Path:
        """The confirmation stage's folder (its own results.csv, configs.csv and tune/)."""
        return self.folder / CONFIRM_DIR

    @property
    def optuna_db(self) -> Path:
        return self.folder / DB_FILE

    @property
    def storage_url(self) -> str:
        """The SQLite URL of the Optuna storage (what optuna-dashboard opens)."""
        return f"sqlite:///{self.optuna_db.resolve()}"

    @property
    def tune_dir(self) -> Path:
        return self.folder / TUNE_DIR

    @property
    def lock_file(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def trials_dir(self) -> Path:
        return self.folder / TRIALS_DIR

    def record_dir(self, config_id: int, replicate: int) -> Path:
        """The fit folder of replicate ``replicate`` of configuration ``config_id``."""
        return self.trials_dir / f"{int(config_id):04d}" / f"{REPLICATE_PREFIX}{int(replicate)}"

    def record_file(self, config_id: int, replicate: int) -> Path:
        """The member file beside that fit folder (``record.read_info``)."""
        folder = self.record_dir(config_id, replicate)
        return folder.with_name(folder.name + ".json")

    def trial_dir(self, trial_id: str) -> Path:
        return self.tune_dir / trial_dirname(trial_id)

    def member_dir(self, trial_id: str, member: int) -> Path:
        """The folder of one member of a trial that trains several (see the module's doc)."""
        return self.trial_dir(trial_id) / f"{MEMBER_PREFIX}{member}"

    def member_checkpoints(self, trial_id: str, member: int) -> list[Path]:
        """Member ``member``'s checkpoint folders in a trial of several members (each
        inside one of the trial's checkpoints) that hold a model state, oldest first."""
        found = sorted(self.trial_dir(trial_id).glob(CHECKPOINT_GLOB))
        return [p for p in (member_checkpoint(c, member) for c in found) if holds_state(p)]

    def result_file(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / RESULT_FILE

    def checkpoints(self, trial_id: str) -> list[Path]:
        """The trial's checkpoint folders that hold a model state, oldest first."""
        found = sorted(self.trial_dir(trial_id).glob(f"{CHECKPOINT_GLOB}/{STATE_FILE}"))
        return [p.parent for p in found]


def member_dirname(member: int) -> str:
    """The name of a member's fit folder inside a pack's checkpoint."""
    return f"{MEMBER_PREFIX}{member}"


def member_checkpoint(trial_checkpoint: str | Path, member: int) -> Path:
    """Member ``member``'s checkpoint folder inside a pack trial's checkpoint folder."""
    return Path(trial_checkpoint) / member_dirname(member) / CHECKPOINT_DIR


def holds_state(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a model state (``run_files.STATE_FILE``)."""
    return (Path(checkpoint_dir) / STATE_FILE).is_file()


def as_number(value: Any) -> float:
    """A table cell as a float: NaN for anything that is not a number (a bool included)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
