"""Ray Tune's part in one stage of a study (the search, or the confirmation): the trainable
with its resources, a new ``Tuner`` each run, and the callback that keeps the stage's tables
current from the record. Tune only runs trials: nothing of the study is read back from its
experiment folder (``tune/``), and each run of the driver starts a new Tune experiment there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from ray import tune
from ray.tune import Callback

from vae_study import metrics as M
from vae_study import timing
from vae_study.config.study import StudyConfig
from vae_study.core.splits import Source
from vae_study.errors import disk_full, disk_full_error
from vae_study.records import record, tables
from vae_study.records import results as R
from vae_study.records.layout import trial_dirname
from vae_study.records.stage import Stage
from vae_study.study.pause import Pause
from vae_study.study.trainable import member_ids, train_trial

# What Tune needs from the environment while a study runs (restored afterwards): the
# objectives (test/...) exist only in a trial's last report; the epochs before it report
# the val/ metrics alone, which Tune's strict check would reject.
TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


def make_trainable(
    study: StudyConfig, source: Source, stage: Stage, resources: dict[str, float]
) -> Any:
    """``train_trial`` with the study, the dataset (once, through Ray's object store), the
    stage whose record it trains into, and each trial's CPUs and GPUs."""
    return tune.with_resources(
        tune.with_parameters(train_trial, study=study, source=source, stage=stage),
        {"cpu": resources["cpu"], "gpu": resources["gpu"]},
    )


def scheduler(study: StudyConfig) -> Any:
    """The study's trial scheduler (ASHA), or None."""
    if study.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=M.EPOCH,
        metric=study.scheduler.metric,
        mode=M.DIRECTIONS.get(study.scheduler.metric, "min"),
        max_t=study.base.train.epochs,
        grace_period=study.scheduler.grace_period,
        reduction_factor=study.scheduler.reduction_factor,
    )


def run_stage(
    study: StudyConfig,
    stage: Stage,
    trainable: Any,
    search_alg: Any,
    *,
    pause: Pause,
    verbose: int,
    max_trials: int,
    trial_scheduler: Any = None,
) -> None:
    """Run the stage's trials with a new Tuner until the searcher has nothing left, or the
    study is paused (``pause``); the stage's tables are current when it returns."""
    if pause.requested:
        return
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=trial_scheduler,
            num_samples=max_trials,  # the searcher may say FINISHED sooner
            reuse_actors=True,
            trial_dirname_creator=tune_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=stage.layout.tune_dir.name,
            storage_path=str(stage.folder.resolve()),
            callbacks=[RecordTables(study, stage, pause)],
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=verbose,
        ),
    )
    pause.phase = Pause.TUNING
    try:
        with ray_disk_full_stops(pause, stage.folder):
            tuner.fit()
    finally:
        pause.phase = Pause.SAVING


# Tune's loggers that report a failed write of its own files (experiment state, trial
# results) in tune/, on the study's disk, and go on.
TUNE_WRITE_LOGGERS = (
    "ray.tune.execution.experiment_state",
    "ray.tune.execution.tune_controller",
    "ray.train._internal.storage",
)


@contextlib.contextmanager
def ray_disk_full_stops(pause: Pause, where: Any) -> Iterator[None]:
    """While Tune runs: a log record of Tune's that says a disk is full (its traceback
    included) is not printed; it stops the study as a full disk does (``pause.stop``), so
    the driver ends with the one line of ``disk_full_error``."""

    def full(rec: logging.LogRecord) -> bool:
        exc = rec.exc_info[1] if rec.exc_info else None
        if not (disk_full(exc) or "No space left on device" in rec.getMessage()):
            return True
        pause.stop(disk_full_error(where))
        return False

    loggers = [logging.getLogger(name) for name in TUNE_WRITE_LOGGERS]
    for lg in loggers:
        lg.addFilter(full)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(full)


def tune_trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: the layout's short trial folder names."""
    return trial_dirname(trial.trial_id)


WRITE_EVERY_S = 2.0  # results.csv and configs.csv rebuilt at most this often for reports


class RecordTables(Callback):
    """Rebuilds the stage's results.csv and configs.csv from the record whenever a trial
    starts, ends or (at most every 2 s) reports, and when the experiment ends (a report held
    back by those 2 s is written by Tune's next step after them, so the tables never lag a
    report for long, even when no other one comes); records the
    error of a trial Ray gave up on in its members' files (unless the study is pausing: then
    the trial was stopped, not failed)."""

    def __init__(self, study: StudyConfig, stage: Stage, pause: Pause) -> None:
        self.study = study
        self.stage = stage
        self.pause = pause
        self.last_write = 0.0
        self.behind = False  # a report came that the tables do not show yet

    def write(self, trials: list, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < WRITE_EVERY_S:
            self.behind = True
            return
        live = {
            number
            for t in trials
            if t.status == "RUNNING"
            for _, _, number in R.trial_configs(t.config)
            if number is not None
        }
        self.rebuild(live)
        self.last_write = now
        self.behind = False

    def rebuild(self, live: set[int] | None = None) -> None:
        """The tables from the record; a full disk stops the study (the record is intact:
        the tables are views, written again by the next run)."""
        try:
            with timing.phase("tables"):
                tables.rebuild(self.study, self.stage, live or ())
        except OSError as exc:
            if not disk_full(exc):
                raise
            self.pause.stop(disk_full_error(exc.filename or self.stage.layout.results_file))

    def on_trial_start(self, iteration, trials, trial, **info):
        timing.event("trial_launched", trial=trial.trial_id)
        self.write(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.write(trials, force=False)

    def on_step_end(self, iteration, trials, **info):
        if self.behind:
            self.write(trials, force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        timing.event("trial_ended", trial=trial.trial_id)
        self.write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        if not self.pause.requested:
            why = R.first_error_line(trial)
            try:
                for cid, r in member_ids(trial.config, self.study):
                    if not record.read_member(self.stage, cid, r).completed:
                        path = self.stage.layout.record_file(cid, r)
                        record.update_info(path, **{record.INFO_ERROR: why})
            except OSError as exc:
                if not disk_full(exc):
                    raise
                self.pause.stop(disk_full_error(exc.filename or self.stage.folder))
        self.write(trials)

    def on_experiment_end(self, trials, **info):
        self.rebuild()
        self.last_write = time.monotonic()
