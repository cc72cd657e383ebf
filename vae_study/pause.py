"""Ctrl-C as a pause of a study: Tune saves every trial's state, the driver its records, and
running the same command again continues the study."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any


class Pause:
    """Ctrl-C (SIGINT) as a clean pause of a study, for the life of the ``with`` block.

    Ray Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) so every
    Ctrl-C passes through here. Before Tune's loop runs it is a KeyboardInterrupt as usual:
    nothing of the study is being written. In the loop, the first one asks Tune to stop
    through the SIGUSR1 handler Tune installs for that purpose: Tune snapshots its experiment
    state and stops the trials. From then until the driver has written its records and Ray
    has shut down, a Ctrl-C is only noted: Tune writes its experiment state in place, and a
    KeyboardInterrupt half-way through it would leave a study that cannot be resumed.
    ``requested`` says whether any Ctrl-C came; the caller raises KeyboardInterrupt at the end.
    """

    BEFORE, TUNING, SAVING = "before", "tuning", "saving"
    _RAY_LINES = (
        "Stop signal received",
        "Experiment has been interrupted",
        "Trials did not complete",
    )  # Tune's words for a pause (Tuner.restore...)

    def __init__(self) -> None:
        self.phase = self.BEFORE
        self.requested = False
        self._installed = False

    def __enter__(self) -> Pause:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread: Ray's default then
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        # A SIGUSR1 handler left by an earlier Tune run in this process would stop nothing.
        self._previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        logging.getLogger("ray.tune.tune").addFilter(self._quiet)
        self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)
        signal.signal(signal.SIGUSR1, self._previous_usr1)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        logging.getLogger("ray.tune.tune").removeFilter(self._quiet)
        self._installed = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.phase == self.BEFORE:
            raise KeyboardInterrupt
        first, self.requested = not self.requested, True
        if self.phase == self.TUNING and first:
            stop_tune = signal.getsignal(signal.SIGUSR1)
            if not callable(stop_tune):  # Tune's loop has not started: nothing to save yet
                raise KeyboardInterrupt
            print(
                "vae_study run: Ctrl-C: pausing the study, saving the state of every trial "
                "(a few seconds)",
                file=sys.stderr,
                flush=True,
            )
            stop_tune(signal.SIGUSR1, frame)
        else:
            print(
                "vae_study run: still saving the study's state; Ctrl-C is ignored until it "
                "is saved",
                file=sys.stderr,
                flush=True,
            )

    def _quiet(self, record: logging.LogRecord) -> bool:
        return not (self.requested and record.getMessage().startswith(self._RAY_LINES))
