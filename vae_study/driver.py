"""The driver of a study: takes the study folder (``study_folder.prepare_folder``), runs Ray
Tune's ``Tuner`` (or restores it), keeps results.csv current and tells Optuna how every trial
ended. Its parts have their own modules: the folder's names (``layout``), the trainable
(``trainable``), the searcher (``searcher``), the Ray cluster (``cluster``), Ctrl-C
(``pause``) and the results table (``results``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune import Callback

from . import metrics as M
from . import results as R
from .cluster import (
    check_arch_on_nodes,
    check_shared_storage,
    environment,
    resolve_resources,
    start_ray,
)
from .config import is_import_path
from .data import Source, prepare, read_source
from .errors import ConfigError, StudyError, VaeStudyError
from .layout import StudyLayout, trial_dirname
from .model import check_models
from .pause import Pause
from .replicates import CONFIG_KEY, aggregate, config_of
from .results import write_table
from .search import make_storage
from .search_config import model_variants
from .searcher import (
    grid_trials,
    make_searcher,
    optuna_outcome,
    write_experiment_state_atomically,
)
from .study_config import StudyConfig, configs_per_trial
from .study_folder import prepare_folder, release_folder
from .trainable import train_trial

# Optuna user attribute of a trial that was running when the study was paused (Ctrl-C).
# Optuna has no "interrupted" state: the trial stays RUNNING until the next run tells it its
# result (COMPLETE, FAIL or PRUNED); the attribute stays as a record that it was paused.
INTERRUPTED_ATTR = "vae_study_interrupted"

# What Tune needs from the environment while a study runs (restored afterwards):
# the objectives (test/...) exist only in a trial's last report; the epochs before it report
# the val/ metrics alone, which Tune's strict check would reject.
_TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
# Keeping one checkpoint per trial makes Tune snapshot its experiment state after every
# epoch: what a killed driver resumes from stays current. Its warning about it is noise
# (a value the user set is kept).
_TUNE_ENV_DEFAULTS = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}

log = logging.getLogger("vae_study")


def run_study(study: StudyConfig, *, fresh: bool = False, verbose: int = 1) -> Path:
    """Run (or continue) a study to ``search.num_trials`` trials; returns its folder.

    Ctrl-C pauses the study (see ``Pause``): trials running then are recorded as
    interrupted, and KeyboardInterrupt is raised once everything is saved; running the same
    command again continues the study.
    """
    # The dataset first: missing or damaged files stop the study before its folder exists.
    source = read_source(study.base.data)  # once
    check_data(study, source)
    variants = model_variants(study.base, study.search.space)
    check_models([c.model for c in variants], source.shape)  # a user model: probed here
    check_asha_members(study, variants, source.shape)
    folder, resume = prepare_folder(study, fresh=fresh)
    try:
        _run_locked(study, folder, source, resume, verbose)
    finally:
        release_folder(folder)
    return folder


def _run_locked(
    study: StudyConfig, folder: Path, source: Source, resume: bool, verbose: int
) -> None:
    check_optuna_db(folder, study.name)
    print(
        f"vae_study run: study {study.name!r} in {folder}" + (" (continuing)" if resume else ""),
        flush=True,
    )
    defaults = {k: v for k, v in _TUNE_ENV_DEFAULTS.items() if k not in os.environ}
    with environment({**_TUNE_ENV, **defaults}), Pause() as pause:
        _run_tuner(study, folder, source, verbose, pause)
    if pause.requested:
        raise KeyboardInterrupt


def _run_tuner(
    study: StudyConfig, folder: Path, source: Source, verbose: int, pause: Pause
) -> None:
    started_here = not ray.is_initialized()
    write_experiment_state_atomically()  # a killed driver must leave a state it can resume
    start_ray(study)
    try:
        resources = resolve_resources(study)
        check_shared_storage(folder)
        for arch in sorted({c.model.arch for c in model_variants(study.base, study.search.space)}):
            if is_import_path(arch):
                check_arch_on_nodes(arch)  # a user model imports on every node
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, study=study, source=source),
            {"cpu": resources["cpu"], "gpu": resources["gpu"]},
        )
        tune_dir = StudyLayout(folder).tune_dir
        tuner = restore_tuner(tune_dir, trainable, "start the study over with --fresh")
        if tuner is None:
            tuner = tune.Tuner(
                trainable,
                tune_config=_tune_config(
                    study, folder, configs_per_trial(study, gpu=resources["gpu"] > 0)
                ),
                run_config=run_config(study, folder, verbose),
            )
        pause.phase = Pause.TUNING
        grid = tuner.fit()
        paused = pause.requested  # a Ctrl-C from now on came after Tune's loop ended
        pause.phase = Pause.SAVING
        _finish(study, folder, grid, paused=paused)
        if study.search.confirm is not None and not pause.requested:  # the last stage
            from .confirm import run_confirmation

            run_confirmation(study, folder, trainable, verbose=verbose, pause=pause)
    finally:
        if started_here:
            ray.shutdown()


def check_asha_members(
    study: StudyConfig, variants: list[Any], shape: tuple[int, int, int]
) -> None:
    """ASHA decides on a configuration's replicate mean each epoch: its replicates must train
    side by side. A model whose members train one after another (``fused.fusion_mode``:
    sequential) has that mean only when the last replicate catches up, so ASHA could not
    stop it: refused before Ray starts."""
    if study.scheduler.type != "asha" or study.search.replicates < 2:
        return
    from .config import replace_keys
    from .fused import SEQUENTIAL, fusion_mode

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


def run_config(study: StudyConfig, folder: Path, verbose: int) -> Any:
    """Tune's RunConfig of the experiment in ``folder``'s ``tune/`` (the search's, or the
    confirmation's in ``confirm/``): its results table, one checkpoint a trial, 2 retries."""
    return tune.RunConfig(
        name=StudyLayout(folder).tune_dir.name,
        storage_path=str(folder.resolve()),
        callbacks=[ResultsTable(study, folder)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=2),
        verbose=verbose,
    )


def restore_tuner(tune_dir: Path, trainable: Any, fix: str) -> Any:
    """The Tuner of the experiment in ``tune_dir`` restored (unfinished and errored trials
    resumed), or None when there is none to restore; a damaged one is a ``StudyError`` that
    ends with ``fix``."""
    if not tune.Tuner.can_restore(str(tune_dir.resolve())):
        return None
    check_tune_state(tune_dir)
    try:
        return tune.Tuner.restore(
            str(tune_dir.resolve()), trainable, resume_unfinished=True, resume_errored=True
        )
    except Exception as exc:
        raise StudyError(
            f"Ray Tune's experiment state in {tune_dir} cannot be "
            f"restored ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing "
            f"was changed; {fix}"
        ) from None


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


def check_tune_state(tune_dir: Path) -> None:
    """Ray Tune skips an experiment state it cannot parse and starts the trials over; a
    damaged state must stop the study instead, before anything is overwritten."""
    for path in sorted(tune_dir.glob("experiment_state-*.json"))[-1:]:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StudyError(
                f"Ray Tune's experiment state {path} cannot be restored "
                f"({type(exc).__name__}: {exc}); nothing was changed; start "
                "the study over with --fresh"
            ) from None


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


def _tune_config(study: StudyConfig, folder: Path, pack_size: int = 1) -> Any:
    """Tune's settings; ``pack_size``: configurations per Ray trial (search.num_trials
    counts configurations, so Ray runs ceil(num_trials / pack_size) trials)."""
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if study.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=M.EPOCH,
            metric=study.scheduler.metric,
            mode=M.DIRECTIONS.get(study.scheduler.metric, "min"),
            max_t=study.base.train.epochs,
            grace_period=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor,
        )
    return tune.TuneConfig(
        search_alg=make_searcher(study, folder, pack_size),
        scheduler=scheduler,
        num_samples=-(-study.search.num_trials // pack_size),
        reuse_actors=True,
        trial_dirname_creator=tune_trial_dirname,
    )


def tune_trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: the layout's short trial folder names."""
    return trial_dirname(trial.trial_id)


class ResultsTable(Callback):
    """Rewrites results.csv from all of Ray's trials whenever one starts, ends or (at most
    every 2 s) reports, and when the experiment ends.

    A study paused by Ctrl-C ends Tune's loop with trials still running; Tune then marks them
    TERMINATED as it stops their workers, like a finished trial. What each trial was doing at
    the end of Tune's last step (``on_step_end``) tells them apart: the table calls them
    interrupted. (Pickled with the Tuner: a restored study uses this object again.)
    """

    def __init__(self, study: StudyConfig, folder: Path) -> None:
        self.study = study
        self.folder = folder
        self.last_write = 0.0

    def write(self, trials: list, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < 2.0:
            return
        write_table(self.study, self.folder, trials)
        self.last_write = now

    def on_trial_start(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.write(trials, force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_step_end(self, iteration, trials, **info):
        self.live = {t.trial_id for t in trials if t.status in ("RUNNING", "PAUSED")}

    def on_experiment_end(self, trials, **info):
        write_table(self.study, self.folder, trials, getattr(self, "live", set()))
        self.last_write = time.monotonic()


def _finish(study: StudyConfig, folder: Path, grid: Any, *, paused: bool) -> None:
    """The final results.csv and Optuna records, and one line saying where the study stands.

    Finished: every Optuna trial ends; one still RUNNING that Ray never recorded (asked by a
    driver killed before Tune's snapshot) never ran: FAIL. Paused: Optuna trials still
    RUNNING stay so, marked with ``INTERRUPTED_ATTR``: the next run tells them their result.
    """
    trials = grid_trials(grid)
    path = StudyLayout(folder).results_file
    rows: list[dict[str, Any]] = []
    if paused:
        try:  # written by ResultsTable as Tune ended, with the interrupted trials told apart
            rows = R.read_results(path).to_dict("records")
        except VaeStudyError:
            rows = []
    if not rows:
        rows = write_table(study, folder, trials)
    ended = _trials_ended(rows)
    _finish_optuna(study, folder, trials, ended, paused=paused)
    # Counted in configurations (search.num_trials counts them), each with its replicates.
    configs = aggregate(rows, param_keys=[], metrics=[], replicates=study.search.replicates)
    interrupted = {config_of(r) for r in rows if r["status"] == R.INTERRUPTED}
    status = [
        R.INTERRUPTED if c[CONFIG_KEY] in interrupted and c["status"] != R.FAILED else c["status"]
        for c in configs
    ]
    count = {
        s: status.count(s) for s in (R.COMPLETED, R.STOPPED, R.FAILED, R.INTERRUPTED, R.PENDING)
    }
    finished = count[R.COMPLETED] + count[R.STOPPED] + count[R.FAILED]
    detail = ", ".join(f"{n} {s}" for s, n in count.items() if n)
    head = "paused" if paused else "done"
    what = "trials" if study.search.replicates == 1 else "configurations"
    print(
        f"vae_study run: {head}: {finished} of {study.search.num_trials} {what} finished"
        + (f" ({detail})" if detail else "")
        + f"; results in {path}",
        flush=True,
    )


def _trials_ended(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Ray trial id -> whether every member of the trial has finished."""
    ended: dict[str, bool] = {}
    for r in rows:
        trial_id = str(r["trial_id"])
        ended[trial_id] = ended.get(trial_id, True) and r["status"] in R.FINISHED
    return ended


def _finish_optuna(
    study: StudyConfig, folder: Path, trials: list, ended: dict[str, bool], *, paused: bool
) -> None:
    storage = make_storage(folder)
    ot_study = optuna.load_study(study_name=study.name, storage=storage)
    study_id = storage.get_study_id_from_name(study.name)
    # Optuna trial number -> (the Ray trial that trains it, that configuration's result).
    by_number = {
        number: (t, part)
        for t in trials
        for number, part in R.config_results(t.config, t.last_result)
    }
    metrics = [o.metric for o in study.search.objectives]
    for t in ot_study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ):
        ray_trial, part = by_number.get(t.number, (None, None))
        if ray_trial is not None and ended.get(ray_trial.trial_id):
            # Ray ended it but the searcher never told Optuna (an older snapshot)
            state, value = optuna_outcome(metrics, part, error=ray_trial.status == "ERROR")
            _tell(ot_study, t.number, state, value)
        elif paused:
            if t.state == optuna.trial.TrialState.RUNNING:
                storage.set_trial_user_attr(
                    storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                    INTERRUPTED_ATTR,
                    True,
                )
        else:  # asked by a driver that was killed before Ray recorded the trial: never ran
            _tell(ot_study, t.number, optuna.trial.TrialState.FAIL, None)


def _tell(ot_study: Any, number: int, state: Any, value: Any) -> None:
    try:
        ot_study.tell(number, value, state=state)
    except RuntimeError as exc:  # the grid sampler's Study.stop outside optimize
        if "Study.stop" not in str(exc):
            log.warning("optuna: %s", exc)
