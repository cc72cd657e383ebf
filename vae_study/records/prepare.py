"""Preparing a study folder for a driver: made or checked (the marker, a folder outside
output.dir, a study with another search or base config), emptied by --fresh, its study.yaml
written, and locked to this driver (``lock``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vae_study import marker
from vae_study.config.study import StudyConfig
from vae_study.config.yaml_file import read_yaml, write_yaml
from vae_study.errors import StudyError
from vae_study.records.layout import StudyLayout
from vae_study.records.lock import lock_folder, release_folder


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
    marker.check_owned(  # a folder of the user's is never written into, nor deleted
        folder,
        marker.STUDY,
        legacy=_legacy_study_folder,
        fix="choose another name (--set name=...) or output.dir",
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(
            f"cannot write the study folder {folder}: {exc.strerror}; choose another output.dir"
        ) from None
    lock_folder(folder)  # before anything in it is deleted or written
    try:
        marker.write(folder, marker.STUDY)  # also marks a folder an older vae_study wrote
        resume = _check_folder(study, folder, fresh=fresh)
    except BaseException:
        release_folder(folder)
        raise
    return folder, resume


def _legacy_study_folder(folder: Path) -> bool:
    """Whether an unmarked folder is a study folder of a vae_study that did not mark its
    folders: ``study.yaml`` with ``optuna.db``, or ``study.yaml`` among a study folder's
    names only (a study that ended before Optuna's file was made); or only the lock file (a
    driver ended between locking the folder and marking it)."""
    layout = StudyLayout(folder)
    names = {p.name for p in folder.iterdir()}
    if names <= {layout.lock_file.name}:
        return True
    if not layout.study_file.is_file():
        return False
    known = {
        p.name
        for p in (
            layout.study_file,
            layout.lock_file,
            layout.results_file,
            layout.configs_file,
            layout.trials_dir,
            layout.tune_dir,
            layout.confirm_dir,
        )
    }
    return layout.optuna_db.is_file() or names <= known


def _check_folder(study: StudyConfig, folder: Path, *, fresh: bool) -> bool:
    layout = StudyLayout(folder)
    previous = layout.study_file
    if fresh:
        for p in folder.iterdir():
            if p in (layout.lock_file, folder / marker.MARKER_FILE):
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
        if changed == ["search"] and _only_confirm_changed(before, now, layout):
            changed = []  # a confirmation added to (or changed before it ran in) a study
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


def _only_confirm_changed(before: dict[str, Any], now: dict[str, Any], layout: StudyLayout) -> bool:
    """Whether the search sections differ in ``search.confirm`` alone while the folder holds
    no confirmation yet: the search's trials are the same, so a confirmation can be added to
    a study that has run (or changed before it started). Once ``confirm/`` exists, its
    experiment is that confirmation, and another one needs a new name or --fresh."""
    b, n = dict(before.get("search") or {}), dict(now.get("search") or {})
    b.pop("confirm", None)
    n.pop("confirm", None)
    return b == n and not layout.confirm_dir.exists()
