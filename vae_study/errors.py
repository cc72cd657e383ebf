"""The one exception hierarchy of vae_study.

The command line turns every ``VaeStudyError`` into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VaeStudyError(Exception):
    """Base class of every error vae_study raises on purpose."""


class ConfigError(VaeStudyError):
    """A study or run configuration is malformed: names the key, the value and the fix."""


class DataError(VaeStudyError):
    """A dataset cannot be found, read or downloaded."""


class TrainingDiverged(VaeStudyError):
    """The loss (or a metric) became NaN or infinite; the run stopped instead of going on."""

    def __init__(self, epoch: int, batch: int, value: float, what: str = "the loss") -> None:
        self.epoch = epoch
        self.batch = batch
        self.value = value
        where = f"epoch {epoch}, batch {batch}" if batch else f"the end of epoch {epoch}"
        super().__init__(
            f"training diverged: {what} is {value} at {where}; lower train.lr or train.beta, "
            "or change the model (the run stopped; its last good checkpoint is kept)"
        )


class CheckpointError(VaeStudyError):
    """A checkpoint or state file is missing, truncated or does not match the config."""


class StudyError(VaeStudyError):
    """A study cannot start or continue (its folder, the cluster, resources, saved state)."""
