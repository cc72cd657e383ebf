"""Reading a study folder without Ray: the resolved study, its trials and configurations,
their histories and checkpoints. Its names are in ``layout``.

It works on a study that is finished, still running or interrupted: it reads only files
(``study.yaml``, ``results.csv``, the members' fit folders in ``trials/``; in a folder of an
older vae_study, Ray's ``tune/trial_*/result.json`` and checkpoints).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.config.study import StudyConfig, study_from_dict
from vae_study.config.yaml_file import read_yaml
from vae_study.errors import VaeStudyError
from vae_study.files import MAX_RECORD_LINES_BYTES, read_bounded
from vae_study.records.configurations import configurations
from vae_study.records.layout import StudyLayout, holds_state
from vae_study.records.replicates import CONFIG_KEY, MEMBER_KEY, REPLICATE_KEY
from vae_study.records.results import member_key, read_results, sub_result
from vae_study.records.trial import Trial
from vae_study.run_files import METRICS_FILE


@dataclass
class StudyFolder:
    """A study folder as the report reads it: ``trials`` are results.csv's rows (one per
    member: a seed of a configuration), ``configs`` one per configuration with the means
    and standard errors over its replicates (the same objects as ``trials`` for a study of
    one seed per configuration, without a config_id column), ``confirmed`` the confirmation
    stage's configurations (``confirm/``; empty without one) and ``confirm_trials`` its
    members."""

    folder: Path
    study: StudyConfig
    trials: list[Trial]
    configs: list[Trial] = None  # type: ignore[assignment]  # None: made from ``trials``
    confirmed: list[Trial] = field(default_factory=list)
    confirm_trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.configs is None:
            self.configs = configurations(
                self.trials,
                self.study,
                replicates=self.study.search.replicates,
                objectives=[(o.metric, o.mode) for o in self.study.search.objectives],
            )


def load_folder(folder: str | Path) -> StudyFolder:
    """Read a study folder; a folder that is not one is a clear ``VaeStudyError``."""
    layout = StudyLayout(folder)
    folder = layout.folder
    if os.path.lexists(layout.study_file) and not layout.study_file.is_file():
        raise VaeStudyError(
            f"{layout.study_file} is not a regular file; give the folder 'vae_study run' made"
        )
    if not layout.study_file.is_file():
        raise VaeStudyError(
            f"{folder} is not a study folder (no {layout.study_file.name}); "
            "give the folder 'vae_study run' made, such as runs/beta_sweep"
        )
    study = study_from_dict(read_yaml(layout.study_file))
    trials = _read_trials(folder, study)
    confirmed: list[Trial] = []
    confirm_trials: list[Trial] = []
    confirm = study.search.confirm
    if confirm is not None:
        confirm_trials = _read_trials(layout.confirm_dir, study)
        confirmed = configurations(confirm_trials, study, replicates=confirm.replicates)
    return StudyFolder(folder, study, trials, None, confirmed, confirm_trials)


def _read_trials(folder: Path, study: StudyConfig) -> list[Trial]:
    table_path = StudyLayout(folder).results_file
    if not table_path.is_file():
        return []
    return [_trial(folder, study, row) for row in read_results(table_path).to_dict("records")]


def _trial(folder: Path, study: StudyConfig, row: dict[str, Any]) -> Trial:
    base = {
        "train.beta": study.base.train.beta,
        "model.latent_dim": study.base.model.latent_dim,
        "train.k": study.base.train.k,
        "train.objective": study.base.train.objective,
    }
    params = dict(base)
    for p in study.search.space:
        value = row.get(p.key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            params[p.key] = value
    trial_id = str(row["trial_id"])
    layout = StudyLayout(folder)
    member = _member(row)
    history = _record_history(layout, row)
    if history is None:  # a folder of an older vae_study: Ray's per-trial reports
        history = read_history(layout.result_file(trial_id), member)
    return Trial(
        trial_id=trial_id,
        status=str(row["status"]),
        params=params,
        metrics=row,
        history=history,
        checkpoint=find_checkpoint(layout, trial_id, row.get("checkpoint"), member),
        pareto=str(row.get("pareto")) == "True",
    )


def _record_history(layout: StudyLayout, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The member's epochs from its fit folder in the record (None: it has none there)."""
    try:
        config, replicate = int(row[CONFIG_KEY]), int(row[REPLICATE_KEY])
    except (KeyError, TypeError, ValueError):
        return None
    path = layout.record_dir(config, replicate) / METRICS_FILE
    if not path.is_file():
        return None
    return read_history(path)


def _member(row: dict[str, Any]) -> int | None:
    """The row's member in its trial (None: a table from before members existed)."""
    try:
        return int(row.get(MEMBER_KEY))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_history(path: Path, member: int | None = None) -> list[dict[str, Any]]:
    """Per-epoch rows of a JSON-lines file (a member's metrics.jsonl, or an older study's
    Ray result.json); a torn last line (a crash) is skipped. ``member``: that member's
    reports (``member_<j>/...``) in a Ray result.json of a trial of several members."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = read_bounded(path, MAX_RECORD_LINES_BYTES).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and member is not None and member_key(member, M.EPOCH) in r:
            r = {**r, **sub_result(r, member_key(member, ""))}  # the member's, not the mean
        if isinstance(r, dict) and M.VAL_NEG_ELBO in r and M.EPOCH in r:
            rows[int(r[M.EPOCH])] = r  # a resumed trial may repeat an epoch: keep the last
    return [rows[e] for e in sorted(rows)]


def find_checkpoint(
    layout: StudyLayout, trial_id: str, recorded: Any, member: int | None = None
) -> Path | None:
    """The trial's (or its member's) checkpoint folder: the one results.csv records
    (``recorded``) if it still holds a model state, else the latest one left in the trial's
    folder (a pack's: the member's folder in it), else None."""
    if isinstance(recorded, str) and holds_state(Path(recorded)):
        return Path(recorded)
    found = layout.member_checkpoints(trial_id, member) if member is not None else []
    found = found or layout.checkpoints(trial_id)
    return found[-1] if found else None
