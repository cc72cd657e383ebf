"""The lock that keeps a study folder to one driver: ``flock`` on its ``driver.lock``."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from vae_study.errors import StudyError
from vae_study.records.layout import StudyLayout

_HELD_LOCKS: dict[Path, int] = {}  # study folder -> the descriptor holding its lock


def lock_folder(folder: Path) -> None:
    """Lock the study folder for this process: ``flock`` on its lock file, held open until
    ``release_folder`` or the process's end (the OS releases the lock of a killed driver, so
    a stale lock file never blocks a rerun). The file names the holder: pid and host.

    Another driver holding it is a ``StudyError`` naming that driver.
    """
    path = StudyLayout(folder).lock_file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown yet"
        os.close(fd)
        raise StudyError(
            f"the study folder {folder} is in use by another vae_study driver "
            f"({holder}); two drivers on one study collide: wait for it to end, "
            "stop it (Ctrl-C pauses it), or give this study another name "
            "(--set name=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[folder.resolve()] = fd


def release_folder(folder: Path) -> None:
    """Unlock a folder ``lock_folder`` locked (the lock file stays: it names no one now)."""
    fd = _HELD_LOCKS.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)
