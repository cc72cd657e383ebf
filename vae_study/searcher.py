"""The searcher: Ray's ``OptunaSearch``, made to tell Optuna the truth about every trial.

Also the one place that touches private attributes of Ray and Optuna (``Internals``): the
versions they were read from are listed, and any other version gets a warning (not a
refusal: a user's cluster is not pinned to ours).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import ray
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from . import results as R
from .errors import StudyError
from .search import define_by_run, encode_point, make_sampler, make_storage
from .study_config import StudyConfig, is_member_key

log = logging.getLogger("vae_study")

# Releases (major.minor) whose private attributes below were read and tested with this code.
TESTED_RAY = frozenset({"2.60"})
TESTED_OPTUNA = frozenset({"5.0"})


# ---------------------------------------------------------------------------------------
# Private attributes of Ray and Optuna: the only code that reads or sets them.
#
# Why they are needed: OptunaSearch keeps the Optuna trial of each Ray trial (``_ot_trials``),
# its Optuna study (``_ot_study``) and the ids it has told (``_completed_trials``) to itself,
# and offers no hook to tell Optuna that a trial failed or was pruned; a ResultGrid hands out
# Results, not the Trials (status, config, checkpoint) the results table is made of
# (``_experiment_analysis``); Tune writes its experiment state in place, so a killed driver can
# leave it truncated (``TuneController.save_to_dir``, ``experiment_state_file_name``,
# ``_storage``); and a local Ray binds every interface unless a constant read at
# import (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``) says multi-node is off.


def _version(module: Any) -> str:
    return ".".join(str(module.__version__).split(".")[:2])


@functools.cache
def check_versions() -> None:
    """Warn once per process when Ray or Optuna is a release these attributes were not
    tested with."""
    for name, module, tested in (("ray", ray, TESTED_RAY), ("optuna", optuna, TESTED_OPTUNA)):
        if _version(module) not in tested:
            warnings.warn(
                f"{name} {module.__version__} is a release vae_study was not tested "
                f"with (tested: {', '.join(sorted(tested))}); the study uses some of "
                f"its private attributes (vae_study/searcher.py); if the study fails, "
                f"pip install '{name}=={sorted(tested)[-1]}.*'",
                stacklevel=2,
            )


def _private(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise StudyError(
            f"{type(obj).__name__}.{name} is missing in ray {ray.__version__} / optuna "
            f"{optuna.__version__}: vae_study reads it (vae_study/searcher.py) and was tested "
            f"with ray {', '.join(sorted(TESTED_RAY))} and optuna "
            f"{', '.join(sorted(TESTED_OPTUNA))}; install one of those"
        ) from None


def optuna_trials(searcher: OptunaSearch) -> dict[str, Any]:
    """Ray trial id -> the Optuna trial the searcher asked for it."""
    return _private(searcher, "_ot_trials")


def optuna_study(searcher: OptunaSearch) -> Any:
    return _private(searcher, "_ot_study")


def told_trials(searcher: OptunaSearch) -> set[str]:
    """Ray trial ids whose result the searcher has told Optuna."""
    return _private(searcher, "_completed_trials")


def grid_trials(grid: Any) -> list[Any]:
    """Ray's Trials (status, config, last result, checkpoint) of a ``ResultGrid``."""
    return list(_private(grid, "_experiment_analysis").trials)


_STATE_TMP: dict[int, str] = {}  # id(TuneController) -> the name its state is written under


def write_experiment_state_atomically() -> None:
    """Ray Tune 2.60 writes its experiment state (``experiment_state-*.json``: the trials a
    resume continues) in place, with ``open(path, "w")``: a driver killed while it writes
    leaves a truncated file, and the study cannot resume. It is written after every report,
    and a pack's reports carry every member's metrics, so the window is not small. This
    makes ``TuneController.save_to_dir`` write it under a temporary name and rename it (the
    searcher's and the callbacks' states are written that way by Ray already). Idempotent."""
    from ray.tune.execution.tune_controller import TuneController

    save = TuneController.save_to_dir
    if getattr(save, "vae_study_atomic", False):
        return
    name = _private(TuneController, "experiment_state_file_name")
    staging = "_storage"  # its experiment_driver_staging_path is where the state goes

    def state_file_name(self: Any) -> str:
        return _STATE_TMP.get(id(self)) or name.fget(self)

    def save_to_dir(self: Any) -> None:
        final = name.fget(self)
        _STATE_TMP[id(self)] = f".vae_study-tmp-{final}"  # not matched by experiment_state-*
        try:
            save(self)
        finally:
            tmp = _STATE_TMP.pop(id(self))
        folder = Path(_private(self, staging).experiment_driver_staging_path)
        os.replace(folder / tmp, folder / final)

    save_to_dir.vae_study_atomic = True  # type: ignore[attr-defined]
    TuneController.experiment_state_file_name = property(state_file_name)
    TuneController.save_to_dir = save_to_dir


def set_ray_multinode(enabled: bool) -> bool | None:
    """Set Ray's multi-node switch for a node started from now on; returns what it was
    (None: this Ray has no such switch, nothing was set)."""
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if before is not None:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
    return before


# ---------------------------------------------------------------------------------------
# The searcher.


class StudySearch(OptunaSearch):
    """OptunaSearch that skips reports without the objective (intermediate epochs),
    records a diverged or metric-less trial as FAIL/PRUNED instead of leaving it
    RUNNING, and tags each trial's config with its Optuna trial number.

    With ``configs_per_trial`` P > 1 a Ray trial trains a pack of up to P configurations
    (``results.PACK_KEY``): ``suggest`` asks Optuna for each separately, the first from the
    study's sampler, the others with its searched shape keys (``shape_keys``: those fused
    members must share) fixed by Optuna's ``PartialFixedSampler``; ``on_trial_complete``
    tells each its own result. ``num_configs`` (search.num_trials) counts configurations:
    the last pack holds what is left. Points to evaluate are configurations too, asked with
    their values fixed the same way (never enqueued: a waiting trial would be popped by the
    next ask, whatever its shape).
    """

    # Class defaults: a searcher pickled before packs existed (a restored study) has one
    # configuration per trial.
    pack_size = 1
    packs: dict[str, list[Any]] = {}  # read-only default; __init__ sets the instance's own

    def __init__(
        self,
        *args: Any,
        configs_per_trial: int = 1,
        num_configs: int = 0,
        shape_keys: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        self.pack_size = configs_per_trial
        self.pack_points: list[dict[str, Any]] = []
        if configs_per_trial > 1:
            self.pack_points = list(kwargs.pop("points_to_evaluate", None) or [])
            self.pack_space = kwargs["space"]
        super().__init__(*args, **kwargs)
        self.num_configs = num_configs
        self.shape_keys = shape_keys
        self.packs: dict[str, list[Any]] = {}  # Ray trial id -> its configurations' trials
        self.configs_asked = 0

    def suggest(self, trial_id: str):
        if self.pack_size > 1:
            return self._suggest_pack(trial_id)
        config = super().suggest(trial_id)
        if config is not None:
            config[R.OPTUNA_TRIAL_KEY] = optuna_trials(self)[trial_id].number
        return config

    def _suggest_pack(self, trial_id: str) -> dict[str, Any] | str:
        if trial_id not in self.packs:
            n = min(self.pack_size, self.num_configs - self.configs_asked)
            if n <= 0:  # every configuration asked (Ray's num_samples normally ends first)
                return Searcher.FINISHED
            study = optuna_study(self)
            trials: list[Any] = []
            shape: dict[str, Any] = {}
            for _ in range(n):
                point = self._next_point(shape)
                trial = self._ask(study, {**point, **shape})
                if not trials:
                    shape = {k: v for k, v in trial.params.items() if k in self.shape_keys}
                elif any(trial.params.get(k) != v for k, v in shape.items()):
                    raise StudyError(  # a bug: Optuna did not hold the fixed values
                        f"optuna trial {trial.number} got {trial.params}, not the shape keys "
                        f"{shape} of its pack (vae_study/searcher.py)"
                    )
                trials.append(trial)
            self.packs[trial_id] = trials
            self.configs_asked += n
        return {
            R.PACK_KEY: [{**t.params, R.OPTUNA_TRIAL_KEY: t.number} for t in self.packs[trial_id]]
        }

    def _next_point(self, shape: dict[str, Any]) -> dict[str, Any]:
        """The first point to evaluate whose shape keys agree with ``shape`` (removed)."""
        for i, point in enumerate(self.pack_points):
            if all(point.get(k, v) == v for k, v in shape.items()):
                return self.pack_points.pop(i)
        return {}

    def _ask(self, study: Any, fixed: dict[str, Any]) -> Any:
        """A new Optuna trial with ``fixed`` values, the others from the study's sampler; the
        space is suggested in it (define-by-run) while the sampler is in place."""
        base = study.sampler
        if fixed:
            with warnings.catch_warnings():  # experimental since Optuna 2.4, still in 5.0
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.sampler = optuna.samplers.PartialFixedSampler(fixed, base)
        try:
            trial = study.ask()
            self.pack_space(trial)
        finally:
            study.sampler = base
        return trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self.packs:
            return
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a trial restored after Optuna recorded its end re-reports its result

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        told, asked = told_trials(self), optuna_trials(self)
        if trial_id in told or (trial_id not in asked and trial_id not in self.packs):
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        configs = self.packs.get(trial_id) or [asked[trial_id]]
        for trial, part in zip(configs, R.split_result(result, len(configs)), strict=True):
            state, value = optuna_outcome(metrics, part, error=error)
            tell(optuna_study(self), trial, state, value)
        told.add(trial_id)


def tell(study: Any, trial: Any, state: Any, value: Any) -> None:
    """Tell Optuna how a trial (or its number) ended; one told before stays as it is."""
    try:
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # told before the driver was killed; Optuna keeps that record
    except RuntimeError as exc:
        # The grid sampler stops the study when its last point is told; outside
        # study.optimize that is an error, after the trial is recorded. Nothing to do.
        if "Study.stop" not in str(exc):
            log.warning("optuna: %s", exc)
    except Exception as exc:  # already told (a restored driver): keep going
        log.warning("optuna: %s", exc)


def optuna_outcome(
    metrics: list[str], result: dict | None, *, error: bool = False
) -> tuple[Any, Any]:
    """(Optuna state, value) of a trial that Ray ended with ``result`` as its last report:
    COMPLETE with the objective values, FAIL (an error, a divergence, a non-finite
    objective) or PRUNED (stopped by the scheduler before the objectives existed)."""
    values = [None if not result else result.get(m) for m in metrics]
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    diverged = bool(result and result.get(R.DIVERGED_KEY))
    if finite and not error and not diverged:
        return optuna.trial.TrialState.COMPLETE, (values if len(values) > 1 else values[0])
    failed = error or diverged or any(isinstance(v, float) and not math.isfinite(v) for v in values)
    return (optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED), None


def make_searcher(
    study: StudyConfig, folder: Path, configs_per_trial: int = 1
) -> ConcurrencyLimiter:
    """The study's searcher; ``configs_per_trial``: the resolved
    ``resources.configs_per_trial`` (``study_config.configs_per_trial``)."""
    check_versions()
    objectives = study.search.objectives
    metric: Any = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
    mode: Any = [o.mode for o in objectives] if len(objectives) > 1 else objectives[0].mode
    searcher = StudySearch(
        space=define_by_run(study.search.space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(study.search),
        study_name=study.name,
        storage=make_storage(folder),
        points_to_evaluate=[encode_point(p) for p in study.search.points_to_evaluate] or None,
        configs_per_trial=configs_per_trial,
        num_configs=study.search.num_trials,
        shape_keys=tuple(p.key for p in study.search.space if not is_member_key(p.key)),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=study.search.max_concurrent)
