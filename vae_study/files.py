"""Files a study depends on, written atomically (temporary file, fsync, rename) and read
with bounds, and the deterministic fault hook that the fault tests kill a process with.

Standard library only: the trainer, the study's record and the report all write through here.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vae_study.errors import CheckpointError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        fault_point(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MAX_RECORD_JSON_BYTES = 2**22  # 4 MiB: a member's JSON file is a few kB
MAX_RECORD_LINES_BYTES = 2**26  # 64 MiB: metrics.jsonl, about 1 kB an epoch
MAX_TABLE_BYTES = 2**28  # 256 MiB: results.csv, about 1 kB a member


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a file vae_study wrote into a folder a user names (a study folder, a fit
    folder): ``FileNotFoundError`` when it is missing, another ``OSError`` when it cannot be
    read, and a ``CheckpointError`` naming it when it is not a regular file (a FIFO would
    block the read forever; a link to a regular file is fine) or holds more than ``limit``
    bytes. Never blocks: the file is opened non-blocking and checked on its descriptor."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise CheckpointError(
                f"{path} is {kind}, where vae_study keeps a file of its own; move it away"
            )
        data = b"" if info.st_size > limit else f.read(limit + 1)  # it may have grown
    if info.st_size > limit or len(data) > limit:
        raise CheckpointError(
            f"{path} holds more than {limit} bytes, more than vae_study ever writes there; "
            "move it away"
        )
    return data


# A deterministic fault for tests: ``FAULT_ENV=<who>:<n>`` kills the study's driver (its pid
# in ``DRIVER_PID_ENV``) with SIGKILL at the n-th atomic write of a process of that kind
# ("driver", or "trial": a process Ray started), after the new file is written and before it
# replaces the old one: the widest window a kill can hit. A trial process then kills itself
# too, so it writes nothing more.
FAULT_ENV = "VAE_STUDY_FAULT_KILL_AT_WRITE"
DRIVER_PID_ENV = "VAE_STUDY_DRIVER_PID"
_writes = {"n": 0}


def fault_point(path: Path) -> None:
    """Count an atomic write of this process and kill as ``FAULT_ENV`` asks (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    driver = os.environ.get(DRIVER_PID_ENV)
    if not spec or not driver:
        return
    who, _, n = spec.partition(":")
    me = "driver" if str(os.getpid()) == driver else "trial"
    if who != me:
        return
    _writes["n"] += 1
    if _writes["n"] == int(n):
        print(f"vae_study fault hook: killing the driver at {me} write {n} ({path})", flush=True)
        os.kill(int(driver), signal.SIGKILL)
        if me == "trial":
            os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT: a terminal's, or a notebook's interrupt) until the block ends.

    For writes that belong together (a checkpoint and the metrics line of its epoch): an
    interrupt in between would leave them disagreeing. The interrupt is delivered, as the
    usual ``KeyboardInterrupt``, once the block is done. Only the main thread receives
    signals; elsewhere (a Ray trainable's thread) this does nothing.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None
    ):  # a handler Python cannot restore
        yield
        return
    received: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])  # Python's default handler raises KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)
