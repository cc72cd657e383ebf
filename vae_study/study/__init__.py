"""Running a study on Ray Tune with Optuna: the driver (run_study), the Tuner and its
callback, the trainable, the searcher, the confirmation stage, the cluster and the pause.
The only subpackage that imports Ray."""

from __future__ import annotations

import importlib

# Public name -> its module, imported on first use (PEP 562): importing one module of this
# subpackage does not load the others' dependencies.
_EXPORTS = {
    "StudySearcher": "searcher",
    "run_study": "driver",
    "train_trial": "trainable",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
