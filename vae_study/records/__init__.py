"""The study folder on disk, the study's own record: its layout (``layout``), the stages'
Optuna studies in optuna.db (``stage``), the members' files (``record``), the tables rebuilt
from them (``tables``: results.csv, configs.csv), reading a folder (``folder``), preparing
and locking it for a driver (``prepare``, ``lock``). No Ray and no torch: a report reads a
study folder through here alone."""

from __future__ import annotations

import importlib

# Public name -> its module, imported on first use (PEP 562): importing one module of this
# subpackage does not load the others' dependencies.
_EXPORTS = {
    "StudyFolder": "folder",
    "StudyLayout": "layout",
    "Trial": "trial",
    "aggregate": "replicates",
    "load_folder": "folder",
    "pareto_front": "pareto",
    "read_results": "results",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
