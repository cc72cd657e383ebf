"""A study's stages, the search and its confirmation, and their side of ``optuna.db``.

Each stage is an Optuna study in the study folder's ``optuna.db`` (SQLite, transactional):
every configuration the stage asked for, its parameters, its state (RUNNING until its result
is told) and its value. The confirmation stage has an Optuna study of its own in the same
file (``confirm_stage``). The members a configuration trains are in ``record``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study.records.layout import StudyLayout

# Optuna user attributes written by vae_study.
INTERRUPTED_ATTR = "vae_study_interrupted"  # a trial running when the study was paused
POINT_ATTR = "vae_study_point"  # the index of the search.points_to_evaluate entry it is
CONFIG_ID_ATTR = "vae_study_config_id"  # a confirmation trial: the configuration it confirms
SELECTED_ATTR = "vae_study_selected"  # the confirmation study: the configurations chosen


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
