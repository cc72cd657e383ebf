"""A study without Ray, in milliseconds: the real driver, searcher, trainable, record and
tables, with Ray Tune's loop replaced by ``StubTune`` and training by synthetic numbers.

``install(monkeypatch)`` puts them in place and returns the ``Script`` a test sets its
faults in: which configuration diverges (``diverge``), where the study is paused
(``pause_at``), a trial's worker killed (``kill_at``) or a trial stopped as a scheduler stops
it (``stop_at``). Each happens at an exact epoch of an exact configuration, however fast the
machine: one trial thread runs at a time, and the loop takes the trials in a fixed order.

What the loop keeps of Ray Tune 2.60's controller (``ray/tune/execution/tune_controller.py``):

- trials are asked from the search algorithm (``suggest``: a config, None for not now, or
  FINISHED) up to ``num_samples``; each runs its function trainable in a thread of its own,
  which waits in ``tune.report`` until the loop takes its next report, as Ray's function
  trainable does; each step takes one report of every running trial, in starting order;
- a report goes to the scheduler first; unless it stops the trial, to the searcher; then to
  the callbacks. A trial stopped by the scheduler or whose function returned is told
  complete with its last report (scheduler, searcher, then callbacks);
- a trial whose function raises (or whose worker dies) runs again, from the start of its
  function, up to ``FailureConfig.max_failures`` times; then it is an error: the searcher's
  ``on_trial_complete(error=True)`` and the callbacks' ``on_trial_error``, with its
  traceback in ``trial.error_file``;
- SIGUSR1 (how the study's pause stops Tune) ends the loop after the step: the running
  trials are stopped without a word to the searcher (``_cleanup_trials``); the callbacks'
  ``on_experiment_end`` runs last in every case.

Training is ``stub_training``'s: synthetic numbers, the fit folders as ``fit`` writes them.
"""

from __future__ import annotations

import functools
import json
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stub_training import stub_fit, stub_fit_pack

from vae_study import metrics as M
from vae_study.config.run import RunConfig
from vae_study.records import results as R
from vae_study.study.pause import Pause

WAIT_S = 120.0  # at most this long for a trial thread's next event (a hang fails the test)
STUB_NODE = "stub-node"


# ---------------------------------------------------------------------------------------
# The faults a test asks for.


@dataclass
class Script:
    """What happens during a stubbed study, by configuration id and epoch.

    A place is (configuration id, epoch), or (configuration id, epoch, stage) for a trial of
    that stage only ("search" or "confirm"): once the loop has taken that report of a trial
    training that configuration, ``pause_at`` raises ``pause_signal`` in the driver (as
    Ctrl-C or a ``kill`` would), once; ``kill_at``: the trial's worker dies there (the
    checkpoint of that epoch written), once per place. ``stop_at``: configuration id -> the
    epoch after which the scheduler stops its trial. ``diverge``: a member's run
    configuration -> the epoch it diverges at (None: never). ``on_report(trial, result)``
    runs after every report the loop takes (where a test looks at the tables mid-run).
    ``starts`` lists every start of a trial's function: (trial id, its configuration ids).
    """

    diverge: Callable[[RunConfig], int | None] = lambda config: None
    pause_at: tuple | None = None
    pause_signal: int = signal.SIGINT
    kill_at: set[tuple] = field(default_factory=set)
    stop_at: dict[int, int] = field(default_factory=dict)
    on_report: Callable[[Any, dict[str, Any]], None] | None = None
    starts: list[tuple[str, list[int]]] = field(default_factory=list)

    @staticmethod
    def hits(trial: _Trial, result: dict[str, Any], place: tuple | None) -> bool:
        if place is None:
            return False
        config, epoch, *stage = place
        if stage and stage[0] != trial.stage:
            return False
        return result.get(M.EPOCH) == epoch and config in trial.config_ids


# ---------------------------------------------------------------------------------------
# Ray Tune's loop.


class _Killed(BaseException):
    """Raised in a trial's thread where Ray would end its worker process."""


class _Trial:
    """What the callbacks and the searcher see of a Ray trial."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id = trial_id
        self.config = config
        self.status = "PENDING"
        self.last_result: dict[str, Any] = {}
        self.num_failures = 0
        self.error_file: str | None = None
        self.thread: threading.Thread | None = None
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.waiting: tuple[str, Any] | None = None  # its first event, taken at its start

    @property
    def config_ids(self) -> list[int]:
        return [int(cid) for _, cid, _ in R.trial_configs(self.config)]

    @property
    def stage(self) -> str:
        """The trial's stage: "confirm" when its config names its replicates, else "search"."""
        return "confirm" if R.TRIAL_REPLICATES_KEY in self.config else "search"

    def get_error(self) -> str | None:
        return Path(self.error_file).read_text() if self.error_file else None

    def __repr__(self) -> str:
        return f"_Trial({self.trial_id}, {self.status})"


class StubTune:
    """What ``tuner`` and ``trainable`` use of ``ray.tune``: ``Tuner`` runs the loop above,
    ``report`` and ``get_context`` serve the trial threads."""

    TuneConfig = RunConfig = FailureConfig = SimpleNamespace

    def __init__(self, script: Script, error_dir: Path) -> None:
        self.script = script
        self.error_dir = error_dir
        self.local = threading.local()

    # -- the trainable's side --

    @staticmethod
    def with_parameters(trainable: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
        return functools.partial(trainable, **kwargs)

    @staticmethod
    def with_resources(trainable: Callable[..., Any], resources: Any) -> Callable[..., Any]:
        return trainable

    def get_context(self) -> Any:
        trial = self.local.trial
        return SimpleNamespace(get_trial_id=lambda: trial.trial_id)

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        trial = self.local.trial
        trial.outbox.put(("result", dict(metrics)))
        if trial.inbox.get() == "die":
            raise _Killed

    # -- the driver's side --

    def Tuner(self, trainable: Any, *, tune_config: Any, run_config: Any) -> _Loop:
        return _Loop(self, trainable, tune_config, run_config)


class _Loop:
    def __init__(self, tune: StubTune, trainable: Any, tune_config: Any, run_config: Any) -> None:
        self.tune, self.trainable = tune, trainable
        self.search = tune_config.search_alg
        self.scheduler = tune_config.scheduler
        self.num_samples = tune_config.num_samples
        self.callbacks = list(run_config.callbacks or [])
        self.max_failures = run_config.failure_config.max_failures
        self.trials: list[_Trial] = []
        self.iteration = 0
        self.stopping = False

    def fit(self) -> None:
        from ray.tune.search import Searcher

        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: self._interrupt())
        finished = False
        try:
            while True:
                while not finished and len(self.trials) < self.num_samples:
                    trial_id = f"stub{len(self.trials):05d}"
                    suggestion = self.search.suggest(trial_id)
                    if suggestion is None:
                        break
                    if suggestion == Searcher.FINISHED:
                        finished = True
                        break
                    trial = _Trial(trial_id, json.loads(json.dumps(suggestion)))
                    self.trials.append(trial)
                    if self.scheduler is not None:
                        self.scheduler.on_trial_add(self, trial)
                    self._start(trial)
                running = [t for t in self.trials if t.status == "RUNNING"]
                if not running:
                    break
                for trial in running:
                    if trial.status == "RUNNING":
                        self._advance(trial)
                self._call("on_step_end", iteration=self.iteration, trials=self.trials)
                self.iteration += 1
                if self.stopping:
                    break
        finally:
            for trial in self.trials:  # Tune's _cleanup_trials: stopped, the searcher untold
                if trial.status == "RUNNING":
                    self._kill(trial)
                    trial.status = "TERMINATED"
            signal.signal(signal.SIGUSR1, previous)
        self._call("on_experiment_end", trials=self.trials)

    def _interrupt(self) -> None:
        self.stopping = True

    def _call(self, hook: str, **info: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(**info)

    # -- one trial --

    def _start(self, trial: _Trial) -> None:
        """Start the trial's function in its thread and wait for its first event."""
        trial.status = "RUNNING"
        self.tune.script.starts.append((trial.trial_id, trial.config_ids))
        self._call("on_trial_start", iteration=self.iteration, trials=self.trials, trial=trial)

        def run() -> None:
            self.tune.local.trial = trial
            try:
                self.trainable(json.loads(json.dumps(trial.config)))
            except _Killed:
                trial.outbox.put(("killed", None))
                return
            except BaseException as exc:  # the trial's error, as Ray catches it
                trial.outbox.put(("error", exc))
                return
            trial.outbox.put(("done", None))

        trial.thread = threading.Thread(target=run, name=trial.trial_id, daemon=True)
        trial.thread.start()
        trial.waiting = self._next_event(trial)

    def _next_event(self, trial: _Trial) -> tuple[str, Any]:
        try:
            return trial.outbox.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"trial {trial.trial_id} sent nothing in {WAIT_S} s") from None

    def _advance(self, trial: _Trial) -> None:
        """Take the trial's next event: a report, its end, or its error."""
        if trial.waiting is not None:
            kind, payload = trial.waiting
            trial.waiting = None
        else:
            trial.inbox.put("go")
            kind, payload = self._next_event(trial)
        if kind == "result":
            self._on_result(trial, payload)
        elif kind == "done":
            trial.thread.join(WAIT_S)
            self._complete(trial)
        else:
            trial.thread.join(WAIT_S)
            self._failed(trial, payload)

    def _on_result(self, trial: _Trial, result: dict[str, Any]) -> None:
        script = self.tune.script
        result = {**result, "trial_id": trial.trial_id}
        decision = "CONTINUE"
        if self.scheduler is not None:
            decision = self.scheduler.on_trial_result(self, trial, result)
        epoch = result.get(M.EPOCH)
        if any(script.stop_at.get(c) == epoch for c in trial.config_ids):
            decision = "STOP"
        if decision != "STOP":
            self.search.on_trial_result(trial.trial_id, result)
        self._call(
            "on_trial_result",
            iteration=self.iteration,
            trials=self.trials,
            trial=trial,
            result=result,
        )
        trial.last_result = result
        if script.on_report is not None:
            script.on_report(trial, result)
        if decision == "STOP":
            self._kill(trial)
            self._complete(trial)
            return
        killed = next((k for k in sorted(script.kill_at) if script.hits(trial, result, k)), None)
        if killed is not None:
            script.kill_at.discard(killed)
            self._kill(trial)
            self._failed(trial, RuntimeError("the trial's worker died (SIGKILL)"))
            return
        if script.pause_at is not None and script.hits(trial, result, script.pause_at):
            script.pause_at = None
            signal.raise_signal(script.pause_signal)  # the driver's pause; SIGUSR1 to us

    def _kill(self, trial: _Trial) -> None:
        """End the trial's thread where it waits in ``tune.report`` (Ray ends its worker)."""
        kind = trial.waiting[0] if trial.waiting is not None else "result"  # its last event
        trial.waiting = None
        while kind == "result":
            trial.inbox.put("die")
            kind, _ = self._next_event(trial)
        trial.thread.join(WAIT_S)

    def _complete(self, trial: _Trial) -> None:
        if self.scheduler is not None:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
        self.search.on_trial_complete(trial.trial_id, result=trial.last_result)
        self._call("on_trial_complete", iteration=self.iteration, trials=self.trials, trial=trial)
        trial.status = "TERMINATED"

    def _failed(self, trial: _Trial, exc: BaseException) -> None:
        trial.num_failures += 1
        path = self.tune.error_dir / trial.trial_id / "error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)))
        trial.error_file = str(path)
        if trial.num_failures <= self.max_failures:  # Ray starts the trial again
            self._start(trial)
            return
        if self.scheduler is not None:
            self.scheduler.on_trial_error(self, trial)
        self.search.on_trial_complete(trial.trial_id, error=True)
        trial.status = "ERROR"
        self._call("on_trial_error", iteration=self.iteration, trials=self.trials, trial=trial)


# ---------------------------------------------------------------------------------------
# Putting it in place.


def install(monkeypatch: Any, tmp_path: Path) -> Script:
    """Replace Ray (the cluster, Tune, the trial's context) and training in the study
    layer for one test; returns the test's ``Script``."""
    import torch

    from vae_study.core import fused, train
    from vae_study.study import driver, trainable, tuner

    script = Script()
    tune = StubTune(script, tmp_path / "stub_errors")
    ray = SimpleNamespace(
        is_initialized=lambda: False,
        shutdown=lambda: None,
        get_gpu_ids=lambda: [],
        get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: STUB_NODE),
    )
    monkeypatch.setattr(tuner, "tune", tune)
    monkeypatch.setattr(trainable, "tune", tune)
    monkeypatch.setattr(trainable, "ray", ray)
    monkeypatch.setattr(driver, "ray", ray)
    monkeypatch.setattr(driver, "start_ray", lambda study: None)
    monkeypatch.setattr(driver, "resolve_resources", lambda study: {"cpu": 1.0, "gpu": 0.0})
    monkeypatch.setattr(driver, "check_shared_storage", lambda folder: None)
    monkeypatch.setattr(driver, "Pause", PatientPause)

    def diverge(config: RunConfig) -> int | None:
        return script.diverge(config)  # as the test sets it, after install

    monkeypatch.setattr(train, "fit", functools.partial(stub_fit, diverge=diverge))
    monkeypatch.setattr(fused, "fit_pack", functools.partial(stub_fit_pack, diverge=diverge))
    # train_trial hides every GPU from a trial without a share (CUDA_VISIBLE_DEVICES=""),
    # here in the test process: put back after the test, and no CUDA started meanwhile.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return script


class PatientPause(Pause):
    """The driver's ``Pause`` with a deadline no slow test machine reaches: its watchdog
    ends the process (``os._exit``), which would end the test session."""

    def __init__(self, *, deadline_s: float = 3600.0, on_deadline: Any = None) -> None:
        super().__init__(deadline_s=3600.0, on_deadline=on_deadline)
