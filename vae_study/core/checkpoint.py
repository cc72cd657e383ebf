"""Checkpoints: a folder that describes itself (``state.pt`` + ``config.yaml``).

``state.pt`` holds the weights, the optimizer state, the epoch, the RNG states, the metric
history and the resolved config; it is read with ``torch.load(weights_only=True)`` so a
checkpoint can never run code. Every file is written atomically (temporary file + rename).
``check_resumable`` and ``check_shape`` say whether a run may continue one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vae_study import timing
from vae_study.config.run import RunConfig, to_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.errors import CheckpointError
from vae_study.files import atomic_write_bytes
from vae_study.run_files import CONFIG_FILE, STATE_FILE

# Keys that may change between a checkpoint and the run that resumes it: they do not change
# what was trained so far (more epochs, another device, another evaluation).
RESUMABLE_CHANGES = ("train.epochs", "train.device", "data.root", "eval.")


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


def check_resumable(saved: dict[str, Any], config: RunConfig, where: Path) -> None:
    """Refuse to continue a checkpoint trained under a different configuration."""
    now = flatten_keys(to_dict(config))
    # A key the checkpoint lacks is newer than it: the run was trained with its default.
    before = {**flatten_keys(to_dict(RunConfig())), **flatten_keys(saved)}
    # A scheduled learning rate is a function of the whole run's length: more epochs would
    # have given the epochs done other rates.
    free = tuple(
        c
        for c in RESUMABLE_CHANGES
        if c != "train.epochs" or now.get("train.lr_schedule") == "constant"
    )
    changed = [
        k
        for k in sorted(set(now) | set(before))
        if now.get(k) != before.get(k)
        and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in free)
    ]
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"the checkpoint in {where} was trained with another "
            f"configuration ({diffs}); use another output folder or "
            "--fresh to start over"
        )


def check_shape(saved: tuple[int, ...], now: tuple[int, ...], where: Path) -> None:
    """Refuse to continue a checkpoint made for examples of another (C, H, W)."""
    if tuple(saved) != tuple(now):
        raise CheckpointError(
            f"the checkpoint in {where} was trained on examples of shape (C, H, W) = "
            f"{tuple(saved)}, but the data are {tuple(now)}; use the data it was trained "
            "on, another output folder, or --fresh to start over"
        )


def flatten_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys (``{"train.lr": ...}``), tuples as lists."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat
