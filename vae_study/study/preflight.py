"""Pre-flight: what a study checks before its folder exists or Ray starts, so that a bad
data section, a model that does not build, a scheduler that cannot decide or a damaged
optuna.db stops it with one line instead of in a trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from vae_study.config.space import model_variants
from vae_study.config.study import StudyConfig
from vae_study.core.data import prepare, read_source
from vae_study.core.model import check_models
from vae_study.core.splits import Source
from vae_study.errors import ConfigError, StudyError
from vae_study.records.layout import StudyLayout
from vae_study.records.optuna_db import make_storage


def preflight(study: StudyConfig) -> Source:
    """Check the study's data, models and scheduler; returns the data source, read once.
    The dataset first: missing or damaged files stop the study before its folder exists."""
    source = read_source(study.base.data)
    check_data(study, source)
    variants = model_variants(study.base, study.search.space)
    check_models([c.model for c in variants], source.shape)  # a user model: probed here
    check_asha_members(study, variants, source.shape)
    return source


def check_asha_members(
    study: StudyConfig, variants: list[Any], shape: tuple[int, int, int]
) -> None:
    """ASHA decides on a configuration's replicate mean each epoch: its replicates must train
    side by side. A model whose members train one after another (``fused.fusion_mode``:
    sequential) has that mean only when the last replicate catches up, so ASHA could not
    stop it: refused before Ray starts."""
    if study.scheduler.type != "asha" or study.search.replicates < 2:
        return
    from vae_study.config.run import replace_keys
    from vae_study.core.fused import SEQUENTIAL, fusion_mode

    for config in variants:
        pair = [replace_keys(config, {"train.seed": config.train.seed + r}) for r in (0, 1)]
        mode, why = fusion_mode(pair, shape)
        if mode == SEQUENTIAL:
            raise ConfigError(
                f"scheduler.type: asha with search.replicates: {study.search.replicates}, but "
                f"{why}; ASHA decides on the replicates' mean at each epoch, which members "
                "trained one after another do not have: use scheduler.type: none, or "
                "search.replicates: 1"
            )


def check_data(study: StudyConfig, source: Source) -> None:
    """The base data section, with the largest searched training subset, can be presented
    from ``source``: a train_subset or val_size too large stops the study before it starts.
    (Searched data keys change the training data only; see study_config.)"""
    subsets = [
        v
        for p in study.search.space
        if p.key == "data.train_subset"
        for v in (p.values if p.kind == "choice" else (p.high,))
        if v is not None
    ]
    config = study.base
    if subsets:
        config = study.trial_config({"data.train_subset": int(max(subsets))})
    prepare(source, config.data, dequantize=config.dequantized)


def check_optuna_db(folder: Path, name: str) -> None:
    """A damaged optuna.db is a clear error before anything is scheduled, not a crash."""
    db = StudyLayout(folder).optuna_db
    if not db.exists():
        return
    try:
        storage = make_storage(folder)
        optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return  # the file exists but this study was never created in it (killed early)
    except Exception as exc:
        raise StudyError(
            f"{db} cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it was left as "
            "it is; move it away or start over with --fresh"
        ) from None
