"""A study folder's Optuna storage (``optuna.db``, SQLite): its URL, and the storage opened
for the driver or read-only for a report. Optuna is imported only when a storage is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_study.records.layout import StudyLayout


def storage_url(folder: Path) -> str:
    """The SQLite URL of a study folder's Optuna storage (what optuna-dashboard opens)."""
    return StudyLayout(folder).storage_url


def make_storage(folder: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(storage_url(folder))


def load_optuna_study(folder: Path, name: str) -> Any:
    """The Optuna study of a study folder, read-only use (report, status)."""
    import optuna

    return optuna.load_study(study_name=name, storage=storage_url(folder))
