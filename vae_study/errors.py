"""The one exception hierarchy of vae_study.

The command line turns every ``VaeStudyError`` into one line on stderr and exit status 2
(``StudyFailed``: 1). Anything else is a bug: one line too, naming it as one, and its
traceback under ``--debug``.
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


class StudyFailed(VaeStudyError):
    """A study ran to its end and every configuration of a stage failed: exit status 1."""

    exit_status = 1


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a disk is full: ``ENOSPC``
    from a write, or SQLite's "database or disk is full" (optuna.db)."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(where: object) -> StudyError:
    """The one line a full disk ends a study with: where, how much is free, what to do."""
    import shutil
    from pathlib import Path

    path = Path(str(where)).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return StudyError(
        f"the disk holding {path} is full ({free}); every finished epoch and trial is kept: "
        "free space and run the same command"
    )
