"""The study file and a run's configuration: frozen dataclasses that check themselves when
built (``config.schema``), read from YAML by one hardened loader. No torch, no Ray: a study
file is checked before anything heavy is imported."""

from __future__ import annotations

from vae_study.config.data import DataConfig
from vae_study.config.objectives import ConfirmConfig, Objective
from vae_study.config.run import (
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
    run_config_from_dict,
)
from vae_study.config.search import SearchConfig
from vae_study.config.space import Param
from vae_study.config.study import StudyConfig, load_study, study_from_dict

__all__ = [
    "ConfirmConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "Objective",
    "Param",
    "RunConfig",
    "SearchConfig",
    "StudyConfig",
    "TrainConfig",
    "load_run_config",
    "load_study",
    "run_config_from_dict",
    "study_from_dict",
]
