"""vae_study: hyperparameter studies of variational autoencoders.

Four layers, each a subpackage, importing only downward: ``core`` (torch only: one run),
``records`` (the study folder: no Ray, no torch), ``study`` (Ray Tune and Optuna) and
``report`` (reads records); ``config`` (no torch, no Ray) is read by all of them.

From a notebook::

    import vae_study
    study = vae_study.load_study("studies/smoke.yaml", ["search.num_trials=2"])
    folder = vae_study.run_study(study)          # Ray + Optuna, imported only now
    vae_study.build_report(folder, "reports/smoke")
    vae_study.compare(["runs/compare_vae", "runs/compare_iwae"], "reports/compare")
    trials = vae_study.load_folder(folder).trials
    trials[0].value(vae_study.metrics.VAL_NLL)

``import vae_study`` loads no Ray, Optuna or matplotlib and changes no global state; the
study functions are imported on first use. Every function raises a ``VaeStudyError`` (or a
subclass) for a user's mistake and never exits the process.
"""

from __future__ import annotations

from vae_study import metrics
from vae_study.config.data import DataConfig
from vae_study.config.run import EvalConfig, ModelConfig, RunConfig, TrainConfig, load_run_config
from vae_study.core.model import VAE
from vae_study.core.train import FitResult, fit
from vae_study.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StudyError,
    TrainingDiverged,
    VaeStudyError,
)

# Imported on first use (PEP 562), so that ``import vae_study`` stays free of Ray, Optuna,
# pandas and matplotlib.
_LAZY = {
    "load_study": ("config.study", "load_study"),
    "StudyConfig": ("config.study", "StudyConfig"),
    "run_study": ("study.driver", "run_study"),
    "build_report": ("report.page", "build_report"),
    "compare": ("report.comparison", "compare"),
    "load_folder": ("records.folder", "load_folder"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'vae_study' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "VAE",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "EvalConfig",
    "FitResult",
    "ModelConfig",
    "RunConfig",
    "StudyConfig",
    "StudyError",
    "TrainConfig",
    "TrainingDiverged",
    "VaeStudyError",
    "build_report",
    "compare",
    "fit",
    "load_folder",
    "load_run_config",
    "load_study",
    "metrics",
    "run_study",
]
