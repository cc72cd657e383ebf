"""The driver of a study: the study's steps, in order.

1. Pre-flight, before the folder exists or Ray starts: the data, the models, the scheduler.
2. The folder (``study_folder.prepare_folder``: checked and locked); one made by an older
   vae_study is imported into the record (``record.import_legacy``).
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
from typing import Any

import optuna
import ray

from . import record
from . import results as R
from .checkpoint import DRIVER_PID_ENV
from .cluster import (
    check_arch_on_nodes,
    check_shared_storage,
    environment,
    resolve_resources,
    start_ray,
)
from .config import is_import_path
from .data import Source, prepare, read_source
from .errors import ConfigError, StudyError, StudyFailed, disk_full, disk_full_error
from .layout import COMPLETED, FAILED, INTERRUPTED, PENDING, STOPPED, StudyLayout
from .model import check_models
from .pause import Pause, StudyPaused, continue_command
from .replicates import CONFIG_KEY, aggregate
from .search import make_storage
from .search_config import model_variants
from .searcher import make_searcher
from .study_config import StudyConfig, configs_per_trial
from .study_folder import prepare_folder, release_folder
from .tuner import TUNE_ENV, make_trainable, run_stage, scheduler

log = logging.getLogger("vae_study")

# Kept for code that imported it from here; the record owns the name.
INTERRUPTED_ATTR = record.INTERRUPTED_ATTR


def run_study(study: StudyConfig, *, fresh: bool = False, verbose: int = 1) -> Path:
    """Run (or continue) a study to ``search.num_trials`` configurations; returns its folder.

    A pause (Ctrl-C, SIGTERM, SIGHUP) stops the trials, leaves them to the next run and
    raises ``StudyPaused`` (a KeyboardInterrupt) once everything is recorded; running the
    same command again continues the study.
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
    stages = [record.search_stage(study, folder)]
    if study.search.confirm is not None:
        stages.append(record.confirm_stage(study, folder))
    for stage in stages:
        if record.is_legacy(stage):
            n = record.import_legacy(study, stage)
            print(f"vae_study run: {stage.folder} was {record.LEGACY_WORDS} ({n} members)")
    print(
        f"vae_study run: study {study.name!r} in {folder}" + (" (continuing)" if resume else ""),
        flush=True,
    )
    pause = Pause(on_deadline=lambda signum: _pause_now(study, stages, signum))
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
    study: StudyConfig, stages: list[record.Stage], source: Source, verbose: int, pause: Pause
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
        record.rebuild(study, search)  # a table deleted or cut short comes back first
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
        rows = record.rebuild(study, search)
        print(summary_line(study, search, rows, paused=pause.requested), flush=True)
        if not pause.requested:
            check_not_all_failed(search, rows)
        if len(stages) > 1 and not pause.requested and _all_finished(rows):
            from .confirm import run_confirmation

            run_confirmation(study, stages[1], source, resources, verbose=verbose, pause=pause)
    finally:
        if started_here:
            ray.shutdown()


def _all_finished(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r.get("status") in (COMPLETED, STOPPED, FAILED) for r in rows)


def summary_line(
    study: StudyConfig, stage: record.Stage, rows: list[dict[str, Any]], *, paused: bool
) -> str:
    """Where a stage stands, in configurations (each with its replicates); the counts add up
    to its total: finished (completed, stopped, failed) + interrupted + pending."""
    configs = aggregate(rows, param_keys=[], metrics=[], replicates=stage.replicates)
    interrupted = {
        r[CONFIG_KEY] for r in rows if r.get("status") == INTERRUPTED and CONFIG_KEY in r
    }
    status = [
        INTERRUPTED
        if c[CONFIG_KEY] in interrupted and c["status"] not in (FAILED, COMPLETED)
        else c["status"]
        for c in configs
    ]
    total = len(configs) if stage.is_confirmation else study.search.num_trials
    done = {s: status.count(s) for s in (COMPLETED, STOPPED, FAILED)}
    finished = sum(done.values())
    n_interrupted = status.count(INTERRUPTED)
    n_pending = max(0, total - finished - n_interrupted)
    what = "configurations" if stage.replicates > 1 or stage.is_confirmation else "trials"
    head = "paused" if paused else "done"
    name = "confirmation " if stage.is_confirmation else ""
    detail = ", ".join(f"{n} {s}" for s, n in done.items() if n)
    rest = [f"{n} {s}" for s, n in ((INTERRUPTED, n_interrupted), (PENDING, n_pending)) if n]
    return (
        f"vae_study run: {name}{head}: {finished} of {total} {what} finished"
        + (f" ({detail})" if detail else "")
        + (f"; {', '.join(rest)}" if rest else "")
        + f"; results in {stage.layout.results_file}"
    )


def check_not_all_failed(stage: record.Stage, rows: list[dict[str, Any]]) -> None:
    """A stage that ran to its end with every configuration failed ends the study with
    ``StudyFailed`` (exit status 1), naming the first configuration's error."""
    configs = aggregate(rows, param_keys=[], metrics=[], replicates=stage.replicates)
    if not configs or any(c["status"] != FAILED for c in configs):
        return
    errors = [str(r[R.ERROR_KEY]) for r in rows if r.get(R.ERROR_KEY)]
    first = f"; the first error: {errors[0]}" if errors else ""
    what = "the confirmation's" if stage.is_confirmation else "the study's"
    raise StudyFailed(
        f"all {len(configs)} of {what} configurations failed{first}; "
        f"results in {stage.layout.results_file}"
    )


def _pause_now(study: StudyConfig, stages: list[record.Stage], signum: int) -> None:
    """The pause's deadline passed (a cluster that does not answer): the record already
    holds every finished epoch and optuna.db every told configuration, so write the tables,
    say how to continue and end the process with the pause's status."""
    try:
        for stage in stages:
            if stage.folder.is_dir():
                rows = record.rebuild(study, stage)
                print(summary_line(study, stage, rows, paused=True), flush=True)
    finally:
        print(
            "vae-study: interrupted; to continue, run the same command again: "
            f"{continue_command(sys.argv[1:])}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)


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
