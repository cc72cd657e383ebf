"""The searcher: Optuna's ask and tell on the study's own storage, behind Ray Tune's public
``Searcher`` interface. No private attribute of Ray or Optuna is read or set.

The search record is ``optuna.db`` (``record``); the searcher keeps nothing a resume needs.
When a driver starts, the configurations Optuna still holds as RUNNING (interrupted by a
pause, a killed driver, a dead worker, or never given a slot) are suggested first, with their
own numbers and parameters, so that each member continues from its own checkpoint in the
record; then new ones are asked until the stage holds ``num_configs``. When Ray ends a trial,
each of its configurations is told from the record (``record.outcome``): COMPLETE with the
mean over its replicates, FAIL, or PRUNED when the scheduler stopped it. While the study is
pausing (``pause.requested``), a configuration that has not finished stays RUNNING for the
next run, whatever Ray says of its trial.

With ``pack_size`` P > 1 a Ray trial trains up to P configurations (``results.PACK_KEY``), the
first from the study's sampler, the others with its searched shape keys (``shape_keys``:
those fused members must share) fixed by Optuna's ``PartialFixedSampler``. Points to evaluate
are configurations too, asked with their values fixed the same way and marked with
``stage.POINT_ATTR`` (never enqueued: a waiting trial would be popped by the next ask,
whatever its shape), so a resumed study asks each point once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher

from vae_study.config.optuna_space import define_by_run, encode_point, make_sampler
from vae_study.config.packing import is_member_key
from vae_study.config.study import StudyConfig
from vae_study.errors import StudyError, disk_full_error
from vae_study.records import record
from vae_study.records import results as R
from vae_study.records.layout import TRIALS_DIR
from vae_study.records.stage import (
    CONFIG_ID_ATTR,
    INTERRUPTED_ATTR,
    POINT_ATTR,
    Stage,
    config_id,
    storage,
)
from vae_study.study.ask_tell import ask_fixed, tell

_DIRECTION = {"min": "minimize", "max": "maximize"}


NO_RECORD = (
    f"the trial ended without writing one epoch into the study's record ({TRIALS_DIR}/): "
    "a bug of vae_study; please report it"
)


class StudySearcher(Searcher):
    """Ray Tune's ``Searcher`` over one stage of a study (``stage.Stage``).

    points: configurations to ask for first, as Optuna encodes them; each may carry
    ``R.CONFIG_ID_KEY`` (a confirmation's: the search configuration it trains again).
    extra: keys added to every trial config (the confirmation's replicates and seed offset).
    pause: an object whose ``requested`` says the study is pausing (``pause.Pause``).
    """

    def __init__(
        self,
        study: StudyConfig,
        stage: Stage,
        *,
        sampler: Any,
        num_configs: int,
        pack_size: int = 1,
        shape_keys: Sequence[str] = (),
        points: Sequence[dict[str, Any]] = (),
        extra: dict[str, Any] | None = None,
        pause: Any = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.space = define_by_run(study.search.space)
        self.metrics = [o.metric for o in study.search.objectives]
        self.num_configs = int(num_configs)
        self.pack_size = max(1, int(pack_size))
        self.shape_keys = tuple(shape_keys)
        self.extra = dict(extra or {})
        self.pause = pause
        self.storage = storage(stage)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per ask and tell
        self.study = optuna.create_study(
            study_name=stage.optuna_name,
            storage=self.storage,
            sampler=sampler,
            directions=[_DIRECTION[o.mode] for o in study.search.objectives],
            load_if_exists=True,
        )
        trials = self.study.get_trials(deepcopy=False)
        asked_points = {t.user_attrs.get(POINT_ATTR) for t in trials}
        self.points = [(i, dict(p)) for i, p in enumerate(points) if i not in asked_points]
        # Configurations asked by an earlier driver and never told: trained first.
        self.resume = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        self.asked = len(trials)
        self.assigned: dict[str, list[tuple[int, int]]] = {}  # Ray trial -> (number, id)
        self.study_id = self.storage.get_study_id_from_name(stage.optuna_name)

    def __getstate__(self) -> dict[str, Any]:
        """A pickled copy (Tune pickles its search algorithm into ``tuner.pkl``, which
        vae_study never reads) holds the stage and its counters, not the live Optuna study:
        some samplers (NSGA-II) hold a lock and cannot be pickled."""
        state = dict(self.__dict__)
        state.pop("study", None)
        state.pop("storage", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reopen the stage's Optuna study from the record (with Optuna's default sampler)."""
        self.__dict__.update(state)
        self.storage = storage(self.stage)
        self.study = optuna.load_study(study_name=self.stage.optuna_name, storage=self.storage)

    @property
    def max_trials(self) -> int:
        """At most how many Ray trials this searcher will suggest (Tune's ``num_samples``):
        one per resumed configuration, then packs of the new ones."""
        new = max(0, self.num_configs - self.asked)
        return len(self.resume) + -(-new // self.pack_size)

    @property
    def resumed(self) -> list[int]:
        """The Optuna numbers this driver will run again first (interrupted ones)."""
        return [t.number for t in self.resume]

    # -- Ray Tune's Searcher interface --------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.assigned:  # asked again for the same trial: the same configs
            return None
        entries = self._next()
        if not entries:
            return Searcher.FINISHED
        self.assigned[trial_id] = [(t.number, cid) for t, cid in entries]
        configs = [
            {**t.params, R.OPTUNA_TRIAL_KEY: t.number, R.CONFIG_ID_KEY: cid} for t, cid in entries
        ]
        if self.pack_size > 1:
            return {R.PACK_KEY: configs, **self.extra}
        return {**configs[0], **self.extra}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Epoch values of a single objective, as Optuna's intermediate values (what its
        dashboard draws); a study of several objectives has none."""
        if result.get(R.DISK_FULL_KEY) and self.pause is not None:
            self.pause.stop(disk_full_error(result[R.DISK_FULL_KEY]))
        if len(self.metrics) != 1:
            return
        entries = self.assigned.get(trial_id) or []
        step = result.get("epoch")
        for (number, _), part in zip(entries, R.split_result(result, len(entries)), strict=False):
            value = part.get(self.metrics[0])
            if isinstance(step, int) and isinstance(value, int | float) and math.isfinite(value):
                try:
                    self.storage.set_trial_intermediate_value(self._id(number), step, value)
                except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                    pass  # told already: nothing to add

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if result and result.get(R.DISK_FULL_KEY) and self.pause is not None:
            self.pause.stop(disk_full_error(result[R.DISK_FULL_KEY]))
        for number, cid in self.assigned.pop(trial_id, []):
            state, values, _ = record.outcome(self.stage, cid, self.metrics)
            if state == "complete":
                tell(self.study, number, optuna.trial.TrialState.COMPLETE, values)
            elif self.pause is not None and self.pause.requested:
                self.storage.set_trial_user_attr(self._id(number), INTERRUPTED_ATTR, True)
            elif state == "fail" or error:
                tell(self.study, number, optuna.trial.TrialState.FAIL, None)
            elif not any(m.history for m in record.members(self.stage, cid)):
                # Ended without error and without one epoch in the record: not a scheduler's
                # stop (that comes after an epoch) but a record written elsewhere or lost.
                for r in range(self.stage.replicates):
                    path = self.stage.layout.record_file(cid, r)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    record.update_info(path, **{record.INFO_ERROR: NO_RECORD})
                tell(self.study, number, optuna.trial.TrialState.FAIL, None)
            else:  # stopped by the scheduler before its last epoch
                tell(self.study, number, optuna.trial.TrialState.PRUNED, None)

    def mark_interrupted(self) -> list[int]:
        """Mark every configuration of the stage still RUNNING with ``INTERRUPTED_ATTR`` (a
        pause: Tune does not tell the searcher of every trial it stops); returns them."""
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:
            self.storage.set_trial_user_attr(self._id(t.number), INTERRUPTED_ATTR, True)
        return [t.number for t in running]

    def save(self, checkpoint_path: str) -> None:
        """What Tune asks to keep: nothing that a resume reads (the record is optuna.db)."""
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump({"record": "optuna.db", "study": self.stage.optuna_name}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: the driver builds a new searcher from optuna.db."""

    # -- asking -------------------------------------------------------------------------

    def _next(self) -> list[tuple[Any, int]]:
        """The (Optuna trial, configuration id) of the next Ray trial: resumed ones first
        (those of the first one's shape), then new ones of that shape."""
        entries: list[tuple[Any, int]] = []
        shape: dict[str, Any] | None = None
        while self.resume and len(entries) < self.pack_size:
            i = 0 if shape is None else self._find(shape)
            if i is None:
                break
            trial = self.resume.pop(i)
            if shape is None:
                shape = self._shape(trial.params)
            entries.append((trial, config_id(self.stage, trial)))
        while len(entries) < self.pack_size and self.asked < self.num_configs:
            trial = self._ask(shape or {})
            if trial is None:
                break
            if shape is None:
                shape = self._shape(trial.params)
            elif any(trial.params.get(k) != v for k, v in shape.items()):
                raise StudyError(  # a bug: Optuna did not hold the fixed values
                    f"optuna trial {trial.number} got {trial.params}, not the shape keys "
                    f"{shape} of its pack (vae_study/study/searcher.py)"
                )
            entries.append((trial, config_id(self.stage, trial)))
        return entries

    def _find(self, shape: dict[str, Any]) -> int | None:
        for i, t in enumerate(self.resume):
            if self._shape(t.params) == shape:
                return i
        return None

    def _shape(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k in self.shape_keys}

    def _ask(self, shape: dict[str, Any]) -> Any:
        """A new Optuna trial: the first point to evaluate that fits ``shape``, else one of
        ``shape`` from the study's sampler; its space is suggested while the sampler is in
        place (define-by-run)."""
        point, index = {}, None
        for j, (i, p) in enumerate(self.points):
            if all(p.get(k, v) == v for k, v in shape.items()):
                index, point = i, self.points.pop(j)[1]
                break
        if index is None and self.stage.is_confirmation:
            return None  # a confirmation trains its points and nothing else
        cid = point.pop(R.CONFIG_ID_KEY, None)
        trial = ask_fixed(self.study, self.space, {**point, **shape})
        if index is not None:
            trial.set_user_attr(POINT_ATTR, index)
        if cid is not None:
            trial.set_user_attr(CONFIG_ID_ATTR, int(cid))
        self.asked += 1
        return self.storage.get_trial(self._id(trial.number))  # as stored: params, attrs

    def _id(self, number: int) -> int:
        """The storage's id of the stage's trial ``number`` (what its setters take)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def make_searcher(
    study: StudyConfig, stage: Stage, *, pack_size: int = 1, pause: Any = None
) -> tuple[ConcurrencyLimiter, StudySearcher]:
    """The search's searcher (limited to ``search.max_concurrent`` Ray trials at once)."""
    searcher = StudySearcher(
        study,
        stage,
        sampler=make_sampler(study.search),
        num_configs=study.search.num_trials,
        pack_size=pack_size,
        shape_keys=tuple(p.key for p in study.search.space if not is_member_key(p.key)),
        points=[encode_point(p) for p in study.search.points_to_evaluate],
        pause=pause,
    )
    if searcher.asked:  # a resume: a stream of its own (see make_sampler)
        searcher.study.sampler = make_sampler(study.search, asked=searcher.asked)
    return ConcurrencyLimiter(searcher, max_concurrent=study.search.max_concurrent), searcher
