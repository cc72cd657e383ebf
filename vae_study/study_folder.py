"""The study folder without Ray: reading it (the resolved study, its trials, their
histories) and preparing it for a driver (checked, locked). Its names are in ``layout``.

Reading works on a study that is finished, still running or interrupted: it reads only files
(``study.yaml``, ``results.csv``, Ray's ``tune/trial_*/result.json`` and checkpoints).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics as M
from . import results as R
from .checkpoint import write_yaml
from .config import read_yaml
from .errors import StudyError, VaeStudyError
from .layout import StudyLayout, holds_state
from .replicates import MEMBER_KEY
from .study_config import StudyConfig, study_from_dict


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
    layout = StudyLayout(folder)
    folder = layout.folder
    if not layout.study_file.is_file():
        raise VaeStudyError(
            f"{folder} is not a study folder (no {layout.study_file.name}); "
            "give the folder 'vae_study run' made, such as runs/beta_sweep"
        )
    study = study_from_dict(read_yaml(layout.study_file))
    table_path = layout.results_file
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
    layout = StudyLayout(folder)
    member = _member(row)
    return Trial(
        trial_id=trial_id,
        status=str(row["status"]),
        params=params,
        metrics=row,
        history=read_history(layout.result_file(trial_id), member),
        checkpoint=find_checkpoint(layout, trial_id, row.get("checkpoint"), member),
        pareto=str(row.get("pareto")) == "True",
    )


def _member(row: dict[str, Any]) -> int | None:
    """The row's member in its trial (None: a table from before members existed)."""
    try:
        return int(row.get(MEMBER_KEY))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_history(path: Path, member: int | None = None) -> list[dict[str, Any]]:
    """Per-epoch reports from Ray's result.json; a torn last line (a crash) is skipped.
    ``member``: that member's reports (``member_<j>/...``) in a trial of several members."""
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
        if isinstance(r, dict) and member is not None and R.member_key(member, M.EPOCH) in r:
            r = {**r, **R.sub_result(r, R.member_key(member, ""))}  # the member's, not the mean
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


# ---------------------------------------------------------------------------------------
# Preparing the folder for a driver, and the lock that keeps it to one driver.


def prepare_folder(study: StudyConfig, *, fresh: bool) -> tuple[Path, bool]:
    """Create or check the study folder and lock it for this driver (``release_folder``
    unlocks it); returns (folder, whether it is a resume).

    A folder made by a study with another search space or base config is refused, and so is
    a folder another driver is running (see ``lock_folder``).
    """
    out_root = Path(study.output.dir).expanduser()
    layout = StudyLayout.of(out_root, study.name)
    folder = layout.folder
    resolved_root = out_root.resolve()
    if folder.is_symlink() or (folder.exists() and resolved_root not in folder.resolve().parents):
        raise StudyError(
            f"the study folder {folder} points outside output.dir "
            f"({out_root}); refusing to write there"
        )
    if (
        fresh
        and folder.exists()
        and not layout.study_file.is_file()
        and any(p != layout.lock_file for p in folder.iterdir())
    ):
        raise StudyError(
            f"--fresh would delete {folder}, which is not a vae_study "
            "study folder; remove it yourself or choose another name"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(
            f"cannot write the study folder {folder}: {exc.strerror}; choose another output.dir"
        ) from None
    lock_folder(folder)  # before anything in it is deleted or written
    try:
        resume = _check_folder(study, folder, fresh=fresh)
    except BaseException:
        release_folder(folder)
        raise
    return folder, resume


def _check_folder(study: StudyConfig, folder: Path, *, fresh: bool) -> bool:
    layout = StudyLayout(folder)
    previous = layout.study_file
    if fresh:
        for p in folder.iterdir():
            if p == layout.lock_file:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    resume = previous.is_file()
    if resume:
        before = read_yaml(previous)
        now = study.to_dict()
        changed = [k for k in study.identity() if before.get(k) != now.get(k)]
        if changed:
            raise StudyError(
                f"{folder} holds a study with another "
                + ", ".join(changed)
                + " section; run it under a new name "
                "(--set name=...) or add --fresh to start it over"
            )
    try:
        probe = folder / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(
            f"cannot write the study folder {folder}: {exc.strerror}; choose another output.dir"
        ) from None
    write_yaml(previous, study.to_dict())
    return resume


_HELD_LOCKS: dict[Path, int] = {}  # study folder -> the descriptor holding its lock


def lock_folder(folder: Path) -> None:
    """Lock the study folder for this process: ``flock`` on its lock file, held open until
    ``release_folder`` or the process's end (the OS releases the lock of a killed driver, so
    a stale lock file never blocks a rerun). The file names the holder: pid and host.

    Another driver holding it is a ``StudyError`` naming that driver.
    """
    path = StudyLayout(folder).lock_file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown yet"
        os.close(fd)
        raise StudyError(
            f"the study folder {folder} is in use by another vae_study driver "
            f"({holder}); two drivers on one study collide: wait for it to end, "
            "stop it (Ctrl-C pauses it), or give this study another name "
            "(--set name=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[folder.resolve()] = fd


def release_folder(folder: Path) -> None:
    """Unlock a folder ``lock_folder`` locked (the lock file stays: it names no one now)."""
    fd = _HELD_LOCKS.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)
