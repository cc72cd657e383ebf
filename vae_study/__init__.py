"""vae_study: hyperparameter studies of variational autoencoders.

The training core (``config``, ``data``, ``model``, ``objectives``, ``evaluate``, ``train``)
needs only torch; Ray and Optuna are imported by the study modules alone.
"""

from __future__ import annotations

from .config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, load_run_config
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StudyError,
    TrainingDiverged,
    VaeStudyError,
)
from .model import VAE
from .train import FitResult, fit

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
    "StudyError",
    "TrainConfig",
    "TrainingDiverged",
    "VaeStudyError",
    "fit",
    "load_run_config",
]
