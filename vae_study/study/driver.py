"""The driver of a study: the study's steps, in order.

1. Pre-flight, before the folder exists or Ray starts: the data, the models, the scheduler.
2. The folder (``records.prepare.prepare_folder``: checked and locked); one made by an older
   vae_study is imported into the record (``legacy.import_legacy``).
3. Ray (``cluster``), then the search (``searcher`` over ``optuna.db``, ``tuner``): the
   configurations optuna.db holds as RUNNING first, then new ones to ``search.num_trials``.
4. The confirmation (``confirm``), once the search has finished.

The study's record is its own (``record``): optuna.db and each member's checkpoint folder.
Running the same command again continues it from there, whatever stopped it; Ray Tune's
experiment folder is never read back. A pause (Ctrl-C, SIGTERM, SIGHUP: ``pause``) stops the
trials, leaves their configurations RUNNING and raises ``StudyPaused`` once the tables are
written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import ray

from vae_study.config.packing import configs_per_trial
from vae_study.config.run import is_import_path
from vae_study.config.space import model_variants
from vae_study.config.study import StudyConfig
from vae_study.core.splits import Source
from vae_study.errors import disk_full, disk_full_error
from vae_study.files import DRIVER_PID_ENV
from vae_study.records import tables
from vae_study.records.lock import release_folder
from vae_study.records.prepare import prepare_folder
from vae_study.records.stage import Stage, confirm_stage, search_stage
from vae_study.study import legacy
from vae_study.study.cluster import environment, start_ray
from vae_study.study.node_checks import check_arch_on_nodes, check_shared_storage
from vae_study.study.outcome import all_finished, check_not_all_failed, summary_line
from vae_study.study.pause import Pause, StudyPaused, continue_command
from vae_study.study.preflight import check_optuna_db, preflight
from vae_study.study.resources import resolve_resources
from vae_study.study.searcher import make_searcher
from vae_study.study.tuner import TUNE_ENV, make_trainable, run_stage, scheduler

log = logging.getLogger("vae_study")


def run_study(study: StudyConfig, *, fresh: bool = False, verbose: int = 1) -> Path:
    """Run (or continue) a study to ``search.num_trials`` configurations; returns its folder.

    A pause (Ctrl-C, SIGTERM, SIGHUP) stops the trials, leaves them to the next run and
    raises ``StudyPaused`` (a KeyboardInterrupt) once everything is recorded; running the
    same command again continues the study.
    """
    source = preflight(study)
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
    stages = [search_stage(study, folder)]
    if study.search.confirm is not None:
        stages.append(confirm_stage(study, folder))
    for stage in stages:
        if legacy.is_legacy(stage):
            n = legacy.import_legacy(study, stage)
            print(f"vae_study run: {stage.folder} was {tables.LEGACY_WORDS} ({n} members)")
    print(
        f"vae_study run: study {study.name!r} in {folder}" + (" (continuing)" if resume else ""),
        flush=True,
    )
    pause = Pause(
        on_deadline=lambda signum: _pause_now(study, stages, signum, done=pause.phase == Pause.DONE)
    )
    # Every process of the study carries its driver's pid: the fault hook kills by it, and
    # tests find the Ray processes a driver left.
    env = {**TUNE_ENV, DRIVER_PID_ENV: str(os.getpid())}
    try:
        with environment(env), pause:
            _run_stages(study, stages, source, verbose, pause)
    except Exception as exc:
        if disk_full(exc):
            raise disk_full_error(getattr(exc, "filename", None) or folder) from None
        raise
    if pause.error is not None:
        raise pause.error
    if pause.requested:
        raise StudyPaused(pause.signum or 2)


def _run_stages(
    study: StudyConfig, stages: list[Stage], source: Source, verbose: int, pause: Pause
) -> None:
    search = stages[0]
    started_here = not ray.is_initialized()
    start_ray(study)
    pause.install()  # after ray.init, which sets its own SIGTERM handler
    try:
        resources = resolve_resources(study)
        check_shared_storage(search.folder)
        for arch in sorted({c.model.arch for c in model_variants(study.base, study.search.space)}):
            if is_import_path(arch):
                check_arch_on_nodes(arch)  # a user model imports on every node
        tables.rebuild(study, search)  # a table deleted or cut short comes back first
        limiter, searcher = make_searcher(
            study,
            search,
            pack_size=configs_per_trial(study, gpu=resources["gpu"] > 0),
            pause=pause,
        )
        if searcher.resumed:
            print(
                "vae_study run: continuing configuration(s) "
                f"{', '.join(map(str, searcher.resumed))} from their checkpoints",
                flush=True,
            )
        if searcher.resumed or searcher.asked < study.search.num_trials:
            run_stage(
                study,
                search,
                make_trainable(study, source, search, resources),
                limiter,
                pause=pause,
                verbose=verbose,
                max_trials=searcher.max_trials,
                trial_scheduler=scheduler(study),
            )
        pause.phase = Pause.SAVING
        if pause.requested:
            searcher.mark_interrupted()
        rows = tables.rebuild(study, search)
        print(summary_line(study, search, rows, paused=pause.requested), flush=True)
        if not pause.requested:
            check_not_all_failed(search, rows)
        if len(stages) > 1 and not pause.requested and all_finished(rows):
            from vae_study.study.confirm import run_confirmation

            run_confirmation(study, stages[1], source, resources, verbose=verbose, pause=pause)
        if not pause.requested:
            pause.phase = Pause.DONE  # a signal from here on interrupts nothing
    finally:
        if started_here:
            ray.shutdown()


def _pause_now(study: StudyConfig, stages: list[Stage], signum: int, *, done: bool) -> None:
    """The pause's deadline passed (a cluster that does not answer): the record already
    holds every finished epoch and optuna.db every told configuration, so write the tables,
    say how to continue and end the process with the pause's status. A ``done`` study (only
    Ray's shutdown was left) ends with status 0 and nothing to continue."""
    if done:
        print(
            "vae_study run: the study is done; Ray did not shut down in time, leaving it",
            file=sys.stderr,
            flush=True,
        )
        os._exit(0)
    try:
        for stage in stages:
            if stage.folder.is_dir():
                rows = tables.rebuild(study, stage)
                print(summary_line(study, stage, rows, paused=True), flush=True)
    finally:
        print(
            "vae-study: interrupted; to continue, run the same command again: "
            f"{continue_command(sys.argv[1:])}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)
