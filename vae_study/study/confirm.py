"""The confirmation stage of a study (``search.confirm: {top: N, replicates: R}``).

How a careful paper reports a sweep: select on validation, confirm with seeds, quote test.
Once the search has finished (not when it was paused), the N best configurations on the
study's validation objective(s) are trained again with R fresh seeds, and the report's
headline is their test mean +- standard error.

- **Which configurations.** The configuration means over the search's replicates
  (``replicates.aggregate``, what configs.csv holds) on the study's objective: the N best.
  With several objectives (a rate-distortion study) the configurations on the Pareto front of
  those means, N of them spread evenly along it by the first objective (all of them when the
  front has N or fewer). Only configurations whose every replicate completed are candidates.
- **Which seeds.** ``replicates.replicate_seed(train.seed, r, offset=search.replicates)``:
  replicate r of the confirmation has a seed no replicate of the search used, and the same
  seed in every confirmed configuration (paired, as in the search).
- **Where.** Its own record (``stage.confirm_stage``): an Optuna study of its own in the
  study's ``optuna.db`` (``<name>:confirm``), whose user attribute ``stage.SELECTED_ATTR``
  holds the chosen configurations once they are chosen, one Optuna trial per configuration
  (``stage.CONFIG_ID_ATTR``: the search configuration it confirms), and each member's fit
  folder under ``confirm/trials/``; its tables are ``confirm/results.csv`` and
  ``configs.csv``. It runs the search's trainable, one Ray trial per configuration, with no
  scheduler: the trial config is the configuration's searched keys (as Optuna asked them)
  plus ``_replicates`` (R), ``_seed_offset`` (search.replicates) and ``_config_id``.
- **Resume.** A study run again after a pause or a killed driver during the confirmation
  finds the search finished in optuna.db (nothing runs again there) and continues the
  confirmation's RUNNING configurations from their checkpoints, on the selection recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vae_study.config.study import StudyConfig
from vae_study.errors import StudyError
from vae_study.records import results as R
from vae_study.records import tables
from vae_study.records.layout import StudyLayout
from vae_study.records.replicates import CONFIG_KEY
from vae_study.records.selection import how_confirmed, search_replicates, select_configurations
from vae_study.records.stage import SELECTED_ATTR, Stage, storage

# The Ray trial config keys the trainable reads, named in results.
CONFIG_ID, REPLICATES, SEED_OFFSET = R.CONFIG_ID_KEY, R.TRIAL_REPLICATES_KEY, R.SEED_OFFSET_KEY


def search_configurations(study: StudyConfig, folder: Path) -> list[dict[str, Any]]:
    """The search's configurations, one row each with the means over its replicates
    (``replicates.aggregate`` of results.csv, as configs.csv holds them)."""
    from vae_study import metrics as M
    from vae_study.records.replicates import aggregate

    rows = R.read_results(StudyLayout(folder).results_file).to_dict("records")
    return aggregate(
        rows,
        param_keys=[p.key for p in study.search.space],
        metrics=[*(o.metric for o in study.search.objectives), M.VAL_NEG_ELBO],
        replicates=search_replicates(study),
    )


def confirmation_points(study: StudyConfig, folder: Path) -> dict[int, dict[str, Any]]:
    """configuration id -> its searched keys as the search's Ray trials had them (Optuna's
    parameters, lists as JSON text), for the configurations to confirm."""
    import optuna

    from vae_study.records.optuna_db import make_storage

    confirm = study.search.confirm
    assert confirm is not None
    chosen = select_configurations(
        search_configurations(study, folder), study.search.objectives, confirm.top
    )
    ot_study = optuna.load_study(study_name=study.name, storage=make_storage(folder))
    by_number = {t.number: t for t in ot_study.get_trials(deepcopy=False)}
    keys = [p.key for p in study.search.space]
    points = {}
    for c in chosen:
        if isinstance(c[CONFIG_KEY], str):  # a row from before config ids ("trial:<id>")
            raise StudyError(
                f"{StudyLayout(folder).results_file} has rows without a config_id (written "
                "before seed replicates existed), and the confirmation selected one of them; "
                "a confirmation needs the study's configurations: start the study over with "
                "--fresh to add search.confirm"
            )
        cid = int(c[CONFIG_KEY])
        asked = by_number.get(cid)
        if asked is None or not set(keys) <= set(asked.params):
            raise StudyError(
                f"configuration {cid} of {StudyLayout(folder).results_file} has no Optuna "
                f"trial with its parameters in {StudyLayout(folder).optuna_db}; the "
                "confirmation retrains what Optuna asked for: start the study over with --fresh"
            )
        points[cid] = {k: asked.params[k] for k in keys}  # as the search's trials had them
    return points


def planned_points(study: StudyConfig, stage: Stage) -> dict[int, dict[str, Any]]:
    """configuration id -> its searched keys (as Optuna encodes them): the selection the
    confirmation's Optuna study records, made and recorded now if it holds none."""
    import optuna

    ot_study = optuna.create_study(
        study_name=stage.optuna_name,
        storage=storage(stage),
        directions=["minimize" if o.mode == "min" else "maximize" for o in study.search.objectives],
        load_if_exists=True,
    )
    saved = ot_study.user_attrs.get(SELECTED_ATTR)
    if saved is None:
        points = confirmation_points(study, stage.root)
        saved = [{"config_id": cid, "params": params} for cid, params in sorted(points.items())]
        ot_study.set_user_attr(SELECTED_ATTR, saved)  # one transaction
    return {int(p["config_id"]): dict(p["params"]) for p in saved}


def run_confirmation(
    study: StudyConfig,
    stage: Stage,
    source: Any,
    resources: dict[str, float],
    *,
    verbose: int,
    pause: Any,
) -> None:
    """The confirmation stage of a finished search (see the module's doc), continued from
    its record when it has one. Leaves ``pause.requested`` set when a signal paused it."""
    import optuna

    from vae_study.study.outcome import check_not_all_failed, summary_line
    from vae_study.study.searcher import StudySearcher
    from vae_study.study.tuner import make_trainable, run_stage

    confirm = study.search.confirm
    assert confirm is not None
    points = planned_points(study, stage)
    if not points:
        print(
            "vae_study run: no configuration of the search completed with a finite "
            "objective: nothing to confirm",
            flush=True,
        )
        return
    searcher = StudySearcher(
        study,
        stage,
        sampler=optuna.samplers.RandomSampler(seed=study.search.seed),
        num_configs=len(points),
        points=[{**params, R.CONFIG_ID_KEY: cid} for cid, params in sorted(points.items())],
        extra={REPLICATES: confirm.replicates, SEED_OFFSET: search_replicates(study)},
        pause=pause,
    )
    if searcher.resumed or searcher.asked < len(points):
        words = "continuing" if searcher.asked else "confirming"
        print(
            f"vae_study run: {words} configuration(s) {', '.join(map(str, sorted(points)))} "
            f"({how_confirmed(study)}) in {stage.folder}",
            flush=True,
        )
        from ray.tune.search import ConcurrencyLimiter

        run_stage(
            study,
            stage,
            make_trainable(study, source, stage, resources),
            ConcurrencyLimiter(searcher, max_concurrent=study.search.max_concurrent),
            pause=pause,
            verbose=verbose,
            max_trials=searcher.max_trials,
        )
    if pause.requested:
        searcher.mark_interrupted()
    rows = tables.rebuild(study, stage)
    print(summary_line(study, stage, rows, paused=pause.requested), flush=True)
    if not pause.requested:
        check_not_all_failed(stage, rows)
