"""Reading a study folder without Ray: the resolved study, its trials, their histories.

Works on a study that is finished, still running or interrupted: it reads only files
(``study.yaml``, ``results.csv``, Ray's ``tune/trial_*/result.json`` and checkpoints).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics as M
from . import results as R
from .config import read_yaml
from .errors import VaeStudyError
from .study_config import StudyConfig, study_from_dict

STUDY_FILE = "study.yaml"
TUNE_DIR = "tune"
LOCK_FILE = "driver.lock"  # held (flock) by the driver running the study: pid and host


@dataclass
class Trial:
    """One trial as the report sees it."""

    trial_id: str
    status: str
    params: dict[str, Any]  # every run key that matters, searched or not
    metrics: dict[str, Any]  # the results.csv row
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch
    checkpoint: Path | None = None
    pareto: bool = False

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return math.nan
        return v

    @property
    def finished(self) -> bool:
        return self.status == R.COMPLETED

    @property
    def beta(self) -> float:
        return float(self.params["train.beta"])

    @property
    def latent_dim(self) -> int:
        return int(self.params["model.latent_dim"])

    @property
    def k(self) -> int:
        return int(self.params["train.k"])

    @property
    def objective(self) -> str:
        return str(self.params["train.objective"])

    @property
    def kl_per_dim(self) -> list[float]:
        return R.parse_kl_per_dim(self.metrics.get(M.TEST_KL_PER_DIM))


@dataclass
class StudyFolder:
    folder: Path
    study: StudyConfig
    trials: list[Trial]


def load_folder(folder: str | Path) -> StudyFolder:
    """Read a study folder; a folder that is not one is a clear ``VaeStudyError``."""
    folder = Path(folder)
    if not (folder / STUDY_FILE).is_file():
        raise VaeStudyError(f"{folder} is not a study folder (no {STUDY_FILE}); give the "
                            "folder 'vae_study run' made, such as runs/beta_sweep")
    study = study_from_dict(read_yaml(folder / STUDY_FILE))
    table_path = folder / R.RESULTS_FILE
    trials: list[Trial] = []
    if table_path.is_file():
        table = R.read_results(table_path)
        for row in table.to_dict("records"):
            trials.append(_trial(folder, study, row))
    return StudyFolder(folder, study, trials)


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
    trial_dir = folder / TUNE_DIR / f"trial_{trial_id}"
    return Trial(
        trial_id=trial_id,
        status=str(row["status"]),
        params=params,
        metrics=row,
        history=read_history(trial_dir / "result.json"),
        checkpoint=find_checkpoint(trial_dir, row.get("checkpoint")),
        pareto=str(row.get("pareto")) == "True",
    )


def read_history(path: Path) -> list[dict[str, Any]]:
    """Per-epoch reports from Ray's result.json; a torn last line (a crash) is skipped."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and M.VAL_NEG_ELBO in r and M.EPOCH in r:
            rows[int(r[M.EPOCH])] = r  # a resumed trial may repeat an epoch: keep the last
    return [rows[e] for e in sorted(rows)]


def find_checkpoint(trial_dir: Path, recorded: Any) -> Path | None:
    """The trial's latest checkpoint folder holding state.pt, if any is left."""
    if isinstance(recorded, str) and (Path(recorded) / "state.pt").is_file():
        return Path(recorded)
    found = sorted(trial_dir.glob("checkpoint_*/state.pt"))
    return found[-1].parent if found else None
