"""Checkpoints: a folder that describes itself (``state.pt`` + ``config.yaml``).

``state.pt`` holds the weights, the optimizer state, the epoch, the RNG states, the metric
history and the resolved config; it is read with ``torch.load(weights_only=True)`` so a
checkpoint can never run code. Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import timing
from .config_file import dump_yaml
from .errors import CheckpointError
from .run_files import CONFIG_FILE, STATE_FILE


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


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, dump_yaml(obj))


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


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor  # the training generator's state (a CPU ByteTensor)
    config: dict[str, Any]
    history: list[dict[str, float]]
    # (channels, height, width) of the examples the model was built for; a checkpoint
    # written before shapes were saved was trained on MNIST's.
    shape: tuple[int, int, int] = (1, 28, 28)


def save(folder: Path, state: TrainingState) -> Path:
    """Write ``state`` into ``folder`` (created if needed); returns the folder."""
    import io

    folder = Path(folder)
    with timing.phase("checkpoint", epoch=state.epoch):
        _save(folder, state, io.BytesIO())
    return folder


def _save(folder: Path, state: TrainingState, buf: Any) -> None:
    torch.save(
        {
            "format": 1,
            "epoch": state.epoch,
            "model": state.model,
            "optimizer": state.optimizer,
            "generator": state.generator,
            "config": state.config,
            "history": state.history,
            "shape": [int(s) for s in state.shape],
        },
        buf,
    )
    atomic_write_bytes(folder / STATE_FILE, buf.getvalue())
    write_yaml(folder / CONFIG_FILE, state.config)


def exists(folder: Path | None) -> bool:
    return folder is not None and (Path(folder) / STATE_FILE).is_file()


def load(folder: Path, map_location: torch.device | str = "cpu") -> TrainingState:
    """Read a checkpoint folder; a truncated or foreign file is a ``CheckpointError``.

    The weights and the optimizer state go to ``map_location``; the generator state stays a
    CPU ByteTensor whatever it is, since ``torch.Generator.set_state`` accepts nothing else
    (also for a CUDA generator). So the file is read onto the CPU and the rest moved after.
    """
    path = Path(folder) / STATE_FILE
    if os.path.lexists(path) and not path.is_file():  # a FIFO would block torch.load forever
        raise CheckpointError(f"checkpoint {path} is not a regular file; move it away")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # truncated zip, unpickling refused, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it is "
            "damaged: delete it to start the run again"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != 1:
        raise CheckpointError(f"{path} is not a vae_study checkpoint")
    generator = raw["generator"]
    if not (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8):
        raise CheckpointError(
            f"{path} is damaged (its generator state is not a byte tensor); "
            "delete it to start the run again"
        )
    device = torch.device(map_location)
    return TrainingState(
        epoch=int(raw["epoch"]),
        model=_to(raw["model"], device),
        optimizer=_to(raw["optimizer"], device),
        generator=generator,
        config=raw["config"],
        history=list(raw["history"]),
        shape=_shape(raw.get("shape", [1, 28, 28]), path),
    )


def _shape(value: Any, path: Path) -> tuple[int, int, int]:
    if not (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and v >= 1 for v in value)
    ):
        raise CheckpointError(
            f"{path} is damaged (its image shape {value!r:.80} is not three positive "
            "integers); delete it to start the run again"
        )
    return (int(value[0]), int(value[1]), int(value[2]))


def _to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``.

    Dicts are changed in place, so a state dict keeps its type and ``_metadata``.
    """
    if device.type == "cpu":
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _to(v, device)
        return obj
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj
