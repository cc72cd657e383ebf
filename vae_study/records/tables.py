"""The views of a stage's record: ``results.csv`` (one row per member) and ``configs.csv``
(one per configuration), rebuilt from ``optuna.db`` (``stage``) and the members' files
(``record``) at any time: a deleted or cut-short table is simply written again. No Ray and
no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from vae_study import metrics as M
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    STOPPED,
    holds_state,
)
from vae_study.records.record import INFO_LEGACY, INFO_TRIAL, INFO_WALL, Member, members
from vae_study.records.replicates import (
    CONFIG_KEY,
    MEMBER_KEY,
    REPLICATE_KEY,
    SEED_KEY,
    replicate_seed,
    write_configs,
)
from vae_study.records.stage import CONFIG_ID_ATTR, Stage, config_id, optuna_trials
from vae_study.run_files import CHECKPOINT_DIR

# Where rows of a study folder written by an older vae_study are kept, once imported.
LEGACY_TABLE = "legacy_results.csv"
LEGACY_WORDS = (
    "written by an older vae_study (Ray Tune held its record): its finished trials were "
    "imported from results.csv"
)


def member_row(
    study: Any, stage: Stage, trial: Any, member: Member, *, live: bool
) -> dict[str, Any]:
    """The results.csv row of one member of the Optuna trial ``trial``."""
    import optuna

    from vae_study.config.optuna_space import decode_params

    legacy = member.info.get(INFO_LEGACY)
    if legacy and not member.started:
        return dict(legacy)  # imported from an older vae_study's table, as it was
    params = decode_params(study.search.space, dict(trial.params))
    base_seed = params.get("train.seed", study.base.train.seed)
    info = member.info
    row: dict[str, Any] = {
        "trial_id": info.get(INFO_TRIAL),
        "optuna_trial": trial.number,
        MEMBER_KEY: info.get(MEMBER_KEY, member.replicate),
        CONFIG_KEY: member.config_id,
        REPLICATE_KEY: member.replicate,
        SEED_KEY: replicate_seed(int(base_seed), member.replicate, stage.seed_offset),
        **params,
        M.EPOCH: member.epoch if member.started else None,
        "wall_s": info.get(INFO_WALL),
        "node": info.get(R.NODE_KEY),
        R.DEVICE_KEY: info.get(R.DEVICE_KEY),
        R.FUSION_KEY: info.get(R.FUSION_KEY),
        R.GPU_IDS_KEY: info.get(R.GPU_IDS_KEY),
    }
    for key in (*R.ROW_METRICS, M.TOTAL_SECONDS):
        row[key] = member.value(key) if key != M.TRAIN_EXAMPLES else info.get(key)
    state = trial.state
    States = optuna.trial.TrialState
    if member.error:
        row["status"], row[R.ERROR_KEY] = FAILED, member.error
    elif member.completed:
        row["status"] = COMPLETED
    elif state == States.PRUNED:
        row["status"] = STOPPED
    elif state == States.FAIL:
        row["status"] = FAILED
        row[R.ERROR_KEY] = "failed: another replicate of its configuration failed"
    elif state == States.COMPLETE:
        row["status"] = COMPLETED  # told complete (an older vae_study): its own numbers
    elif live:
        row["status"] = RUNNING
    else:
        row["status"] = INTERRUPTED if member.started else PENDING
    ckpt = member.folder / CHECKPOINT_DIR
    if holds_state(ckpt):
        row["checkpoint"] = str(ckpt)
    return row


def rows(study: Any, stage: Stage, live: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Every member row of the stage, configuration by configuration in Optuna's order.
    ``live``: the Optuna trial numbers whose Ray trial is running now."""
    live = set(live)
    out = []
    for trial in optuna_trials(stage):
        if stage.is_confirmation and CONFIG_ID_ATTR not in trial.user_attrs:
            continue
        cid = config_id(stage, trial)
        for m in members(stage, cid):
            out.append(member_row(study, stage, trial, m, live=trial.number in live))
    # Finished members of an older vae_study's table that no Optuna trial of the stage
    # names (its confirmation had no Optuna study): kept as they were.
    legacy = stage.layout.trials_dir / LEGACY_TABLE
    if legacy.is_file():
        seen = {(r.get(CONFIG_KEY), r.get(REPLICATE_KEY)) for r in out}
        for row in R.read_results(legacy).to_dict("records"):
            key = (int_or_none(row.get(CONFIG_KEY)), int_or_none(row.get(REPLICATE_KEY)) or 0)
            if key not in seen and row.get("status") in FINISHED:
                out.append({k: v for k, v in row.items() if not is_missing(v)})
    return out


def rebuild(study: Any, stage: Stage, live: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Write the stage's results.csv and configs.csv from the record; returns the rows."""
    table = rows(study, stage, live)
    param_keys = [p.key for p in study.search.space]
    objectives = [(o.metric, o.mode) for o in study.search.objectives]
    R.mark_pareto_configs(table, objectives, stage.replicates)
    layout = stage.layout
    layout.folder.mkdir(parents=True, exist_ok=True)
    R.write_results(layout.results_file, table, param_keys)
    write_configs(
        layout.configs_file,
        table,
        param_keys=param_keys,
        metrics=R.CONFIG_METRICS,
        replicates=stage.replicates,
    )
    return table


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def int_or_none(value: Any) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None
