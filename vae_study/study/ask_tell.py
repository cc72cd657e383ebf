"""Optuna's ask and tell as the searcher uses them: a trial asked with some of its values
fixed (``ask_fixed``), and how a configuration ended told once (``tell``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import optuna

log = logging.getLogger("vae_study")


def ask_fixed(study: Any, space: Callable[[Any], Any], fixed: dict[str, Any]) -> Any:
    """A new trial of the Optuna ``study`` with the values ``fixed`` and the others from the
    study's sampler; its space (define-by-run) is suggested while that sampler is in place,
    and the study's own sampler is back when this returns."""
    base = study.sampler
    if fixed:
        with warnings.catch_warnings():  # experimental since Optuna 2.4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.PartialFixedSampler(fixed, base)
    try:
        trial = study.ask()
        space(trial)
    finally:
        study.sampler = base
    return trial


def tell(study: Any, number: int, state: Any, values: Any) -> None:
    """Tell Optuna how a configuration ended; one told before keeps that record."""
    try:
        study.tell(number, values, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # told before (by a driver killed after telling it)
    except RuntimeError as exc:
        # The grid sampler stops the study when its last point is told; outside
        # study.optimize that is an error, after the trial is recorded. Nothing to do.
        if "Study.stop" not in str(exc):
            log.warning("optuna: %s", exc)
