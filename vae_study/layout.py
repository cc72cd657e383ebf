"""The study folder: every name in it, in one place.

A study lives in ``<output.dir>/<name>/`` (``output.dir`` defaults to ``runs``)::

    study.yaml      the resolved study file (what a resume is compared against)
    results.csv     one row per member (a trial trains one or more), rewritten atomically
    configs.csv     one row per configuration: means and standard errors over its replicates
    optuna.db       the Optuna study (``optuna-dashboard sqlite:///.../optuna.db``)
    driver.lock     locked by the driver running the study (one driver per folder)
    tune/           Ray Tune's experiment: its state, and one folder per trial:
      trial_<id>/     result.json (one line per report), checkpoint_<n>/state.pt
    confirm/        the confirmation stage (search.confirm), laid out like a study folder

The driver writes it, the report and ``study_folder`` read it, the search opens its Optuna
storage and the tests build one by hand, all through ``StudyLayout``. Nothing here imports
torch, Ray or Optuna. The words of a trial's status are here too: the driver writes them into
results.csv, the report and the plots read them back.

Several members in one trial (the fused-members issue): the trial's checkpoint is one folder
holding each member's ``fit`` folder, ``member_<m>/`` (its own ``checkpoint/``, metrics.jsonl,
final.json), so a member's model is ``member_checkpoints(trial_id, m)``:
``tune/trial_<id>/checkpoint_<n>/member_<m>/checkpoint/``; Ray's per-trial files stay where
Ray puts them and a one-member trial keeps today's layout (``checkpoints(trial_id)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = "runs"  # output.dir by default, where ``vae_study run`` puts study and run folders
REPORTS_DIR = "reports"  # report.dir by default

STUDY_FILE = "study.yaml"
RESULTS_FILE = "results.csv"
CONFIGS_FILE = "configs.csv"  # one row per configuration: mean and s.e. over its replicates
CONFIRM_DIR = "confirm"  # the confirmation stage: a study folder of its own inside the study
DB_FILE = "optuna.db"
TUNE_DIR = "tune"
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
        from .checkpoint import STATE_FILE  # torch: only when checkpoints are asked for

        found = sorted(self.trial_dir(trial_id).glob(f"{CHECKPOINT_GLOB}/{STATE_FILE}"))
        return [p.parent for p in found]


def member_dirname(member: int) -> str:
    """The name of a member's fit folder inside a pack's checkpoint."""
    return f"{MEMBER_PREFIX}{member}"


def member_checkpoint(trial_checkpoint: str | Path, member: int) -> Path:
    """Member ``member``'s checkpoint folder inside a pack trial's checkpoint folder."""
    from .train import CHECKPOINT_DIR  # torch: only when checkpoints are asked for

    return Path(trial_checkpoint) / member_dirname(member) / CHECKPOINT_DIR


def holds_state(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a model state (``checkpoint.STATE_FILE``)."""
    from .checkpoint import STATE_FILE

    return (Path(checkpoint_dir) / STATE_FILE).is_file()
