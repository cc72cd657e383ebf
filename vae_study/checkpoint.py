"""Checkpoints: a folder that describes itself (``state.pt`` + ``config.yaml``).

``state.pt`` holds the weights, the optimizer state, the epoch, the RNG states, the metric
history and the resolved config; it is read with ``torch.load(weights_only=True)`` so a
checkpoint can never run code. Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import dump_yaml
from .errors import CheckpointError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor  # the training generator's state (a CPU ByteTensor)
    config: dict[str, Any]
    history: list[dict[str, float]]


def save(folder: Path, state: TrainingState) -> Path:
    """Write ``state`` into ``folder`` (created if needed); returns the folder."""
    import io

    folder = Path(folder)
    buf = io.BytesIO()
    torch.save({
        "format": 1,
        "epoch": state.epoch,
        "model": state.model,
        "optimizer": state.optimizer,
        "generator": state.generator,
        "config": state.config,
        "history": state.history,
    }, buf)
    atomic_write_bytes(folder / STATE_FILE, buf.getvalue())
    write_yaml(folder / CONFIG_FILE, state.config)
    return folder


def exists(folder: Path | None) -> bool:
    return folder is not None and (Path(folder) / STATE_FILE).is_file()


def load(folder: Path, map_location: torch.device | str = "cpu") -> TrainingState:
    """Read a checkpoint folder; a truncated or foreign file is a ``CheckpointError``."""
    path = Path(folder) / STATE_FILE
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # truncated zip, unpickling refused, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); it is "
                              "damaged: delete it to start the run again") from None
    if not isinstance(raw, dict) or raw.get("format") != 1:
        raise CheckpointError(f"{path} is not a vae_study checkpoint")
    return TrainingState(epoch=int(raw["epoch"]), model=raw["model"],
                         optimizer=raw["optimizer"], generator=raw["generator"],
                         config=raw["config"], history=list(raw["history"]))
