"""Old names, for study folders written before the study layer was split (Ray pickled these
objects into ``tune/``: the Tuner with its callback, searcher and trial-folder namer). A
study started before the split resumes through them; new code imports ``driver``,
``searcher``, ``trainable`` and ``cluster``."""

from __future__ import annotations

from .driver import ResultsTable
from .driver import tune_trial_dirname as trial_dirname
from .searcher import StudySearch
from .trainable import train_trial

__all__ = ["ResultsTable", "StudySearch", "train_trial", "trial_dirname"]
