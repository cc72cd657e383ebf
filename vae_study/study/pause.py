"""A study's pause: Ctrl-C, SIGTERM and SIGHUP all stop the trials, record those running as
interrupted, and running the same command again continues the study.

Slurm, Kubernetes, ``timeout`` and a closing terminal send SIGTERM or SIGHUP, often to the
whole process group: each is the same pause as Ctrl-C, with the exit status 128 + the
signal's number (130, 143, 129).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

# The signals that pause a study.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StudyPaused(KeyboardInterrupt):
    """The study was paused by the signal ``signum``: everything was recorded, and the same
    command continues it. The command line exits with 128 + ``signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def continue_command(argv: list[str] | tuple[str, ...]) -> str:
    """The command that continues an interrupted ``run`` or ``fit``: the same one, without
    --fresh (which would delete what was saved)."""
    import shlex
    from pathlib import Path

    prog = "vae-study" if Path(sys.argv[0]).name == "vae-study" else "python -m vae_study"
    return f"{prog} {shlex.join(a for a in argv if a != '--fresh')}"


def exit_status(exc: BaseException) -> int:
    """The exit status of a command ended by ``exc`` (a KeyboardInterrupt): 128 + signal."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextlib.contextmanager
def signals_blocked(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Block ``signums`` in this thread while the block runs: processes started meanwhile
    inherit the mask. A local Ray started so keeps running when the study's process group
    gets a SIGTERM, as it does for Ctrl-C (Ray blocks SIGINT in its processes), and the
    driver's pause can stop the trials through it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class Pause:
    """Ctrl-C, SIGTERM and SIGHUP as a clean pause of a study, for the ``with`` block.

    Ray Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) so every
    signal passes through here; ``install`` puts the handlers back after ``ray.init``, which
    sets its own for SIGTERM. Before Tune's loop runs a signal is ``StudyPaused`` at once:
    nothing of the study is being written that the record does not already hold. In the
    loop, the first one asks Tune to stop through the SIGUSR1 handler Tune installs for that
    purpose: the trials stop, and the searcher leaves their configurations RUNNING in
    optuna.db (``requested``). From then until the driver has written its tables and Ray has
    shut down, another signal is only noted. Once the study is done (``DONE``: every stage
    ran to its end and is recorded, only Ray's shutdown is left) a signal pauses nothing:
    ``requested`` stays False, and it is only noted.

    If the driver is not done ``deadline_s`` seconds after the first signal (a cluster that
    no longer answers), ``on_deadline`` is called from a watchdog thread: it records what it
    can and ends the process (Slurm and Kubernetes send SIGKILL some 30 s after SIGTERM).
    ``requested`` says whether a signal came, ``signum`` which came first.
    """

    BEFORE, TUNING, SAVING, DONE = "before", "tuning", "saving", "done"
    _RAY_LINES = (
        "Stop signal received",
        "Experiment has been interrupted",
        "Trials did not complete",
    )  # Tune's words for a pause (Tuner.restore...)

    def __init__(
        self, *, deadline_s: float = 15.0, on_deadline: Callable[[int], None] | None = None
    ) -> None:
        self.phase = self.BEFORE
        self.requested = False
        self.signum: int | None = None
        self.error: BaseException | None = None  # why the study stopped, if not a signal
        self.deadline_s = deadline_s
        self.on_deadline = on_deadline
        self._installed = False
        self._previous: dict[int, Any] = {}
        self._watchdog: threading.Timer | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks and searcher into its own files: the flags only.
        return {"phase": self.phase, "requested": self.requested, "signum": self.signum}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self.__dict__.update(state)

    def __enter__(self) -> Pause:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread: Ray's default then
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        # A SIGUSR1 handler left by an earlier Tune run in this process would stop nothing.
        self._previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        logging.getLogger("ray.tune.tune").addFilter(self._quiet)
        self._installed = True
        return self

    def install(self) -> None:
        """Take the signals back (``ray.init`` replaces the SIGTERM handler with its own)."""
        if self._installed:
            for signum in SIGNALS:
                signal.signal(signum, self._on_signal)

    def __exit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self._installed:
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        signal.signal(signal.SIGUSR1, self._previous_usr1)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        logging.getLogger("ray.tune.tune").removeFilter(self._quiet)
        self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.phase == self.BEFORE:
            raise StudyPaused(signum)
        if self.phase == self.DONE:
            if self.signum is None:
                self.signum = signum
                print(
                    f"vae_study run: {_name(signum)}: the study is done; Ray is shutting down "
                    "(a few seconds)",
                    file=sys.stderr,
                    flush=True,
                )
                self._start_watchdog()
            return
        first, self.requested = not self.requested, True
        if first:
            self.signum = signum
            self._start_watchdog()
        if self.phase == self.TUNING and first:
            stop_tune = signal.getsignal(signal.SIGUSR1)
            if not callable(stop_tune):  # Tune's loop has not started: nothing to stop yet
                raise StudyPaused(signum)
            print(
                f"vae_study run: {_name(signum)}: pausing the study, stopping the trials "
                "(a few seconds)",
                file=sys.stderr,
                flush=True,
            )
            stop_tune(signal.SIGUSR1, frame)
        elif not first:
            print(
                "vae_study run: still saving the study's state; the signal is ignored until "
                "it is saved",
                file=sys.stderr,
                flush=True,
            )

    def stop(self, error: BaseException) -> None:
        """Stop the study for ``error`` (a full disk) as a pause stops it; the driver raises
        ``error`` once the trials have stopped."""
        if self.error is None:
            self.error = error
        if self.requested:
            return
        self.requested = True
        stop_tune = signal.getsignal(signal.SIGUSR1)
        if self.phase == self.TUNING and callable(stop_tune):
            print(f"vae_study run: stopping the study: {error}", file=sys.stderr, flush=True)
            stop_tune(signal.SIGUSR1, None)

    def _start_watchdog(self) -> None:
        if self.on_deadline is None or self._watchdog is not None:
            return
        signum = self.signum or signal.SIGINT
        self._watchdog = threading.Timer(self.deadline_s, self.on_deadline, args=(signum,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _quiet(self, record: logging.LogRecord) -> bool:
        return not (self.requested and record.getMessage().startswith(self._RAY_LINES))


def _name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
