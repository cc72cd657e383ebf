"""Where a run computes and with what numerics: the device ``train.device`` names (as Ray's
``CUDA_VISIBLE_DEVICES`` numbers it for a trial), torch's process-wide float32 settings
(TF32 off unless asked, deterministic cuDNN), and a training random stream carried to
another device type. Torch and the standard library only.
"""

from __future__ import annotations

import os
import warnings

import torch

from vae_study.config.run import TrainConfig


def resolve_device(name: str) -> torch.device:
    """The torch device of ``train.device``.

    ``auto``: the first GPU this process sees when there is one, else the CPU. ``cuda:N``
    numbers the GPUs this process sees from 0, as torch does. A process that
    CUDA_VISIBLE_DEVICES restricts (Ray sets it for a trial with a GPU share: the trial sees
    its GPU, whatever its number on the machine, as cuda:0) and that asks for a GPU past the
    ones it sees but named in that variable gets it under the number it sees it by: a trial
    given GPU 3 that asks for cuda:3 runs on cuda:0. Any other GPU is a ``ConfigError``
    naming the ones the process sees (torch would fail later with "invalid device ordinal").
    """
    from vae_study.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: got {name!r}, but no CUDA GPU is visible; use auto or cpu"
        )
    if name == "cuda":
        return torch.device("cuda")
    index = int(name.removeprefix("cuda:"))
    count = torch.cuda.device_count()
    if index < count:
        return torch.device("cuda", index)
    visible = visible_gpus()
    if visible is not None and str(index) in visible[:count]:
        return torch.device("cuda", visible.index(str(index)))
    if visible is None:
        sees = f"{count} GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
    else:
        sees = (
            f"only GPU {', '.join(visible[:count])} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get(VISIBLE_DEVICES_VAR, '')!r}, as Ray sets it for a trial "
            f"with a GPU share), as cuda:0 to cuda:{count - 1}"
        )
    raise ConfigError(
        f"train.device: got {name!r}, but this process sees {sees}; cuda:N "
        "counts the GPUs the process sees from 0: use cuda or auto (the GPU "
        "it was given) or one of those"
    )


VISIBLE_DEVICES_VAR = "CUDA_VISIBLE_DEVICES"


def visible_gpus() -> list[str] | None:
    """The GPUs CUDA_VISIBLE_DEVICES names (numbers or UUIDs), in the order the process
    numbers them; None when it is unset (the process sees every GPU)."""
    value = os.environ.get(VISIBLE_DEVICES_VAR)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


# What configure_backends sets, process-wide. torch 2.9 replaced the allow_tf32 flags by
# per-backend fp32_precision settings and warns about the old ones (mixing them is an error).
_FP32_PRECISION_API = hasattr(torch.backends.cudnn, "conv")
CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # one workspace size: bit-reproducible cuBLAS


def configure_backends(cfg: TrainConfig, device: torch.device | None = None) -> None:
    """Set torch's process-global numerics for a run: float32 means float32, and the same
    seed on the same device gives the same numbers, also for ``model.arch: conv`` on CUDA.

    - TF32: on Ampere and newer GPUs torch may run float32 matrix products and cuDNN
      convolutions (cuDNN's default: on) in TensorFloat-32, a 10-bit mantissa. Both are off
      unless ``train.tf32`` is true, so "float32" training and every evaluation are float32.
    - cuDNN ``deterministic``: convolutions use reproducible algorithms (the fastest backward
      ones add with atomics, in a different order each time); ``benchmark`` off: no
      algorithm is chosen by timing, which can differ between runs.
    - cuBLAS is bit-reproducible on one stream with one workspace size
      (``CUBLAS_WORKSPACE_CONFIG``, read when CUDA starts: set here, if unset, before a run
      on a GPU starts CUDA in this process). Every other op of the model (elementwise ops,
      reductions, the batch gather) is deterministic on CUDA, so this does without
      ``torch.use_deterministic_algorithms``, which would turn alerts or errors on for all
      later code in the process.

    - Denormal floats (below 1.2e-38 in float32) are flushed to zero on the CPU
      (``torch.set_flush_denormal``; on the thread that trains, and the threads it starts
      later). A trained decoder's confident pixels have logits far below -87, whose
      exp(-|l|), sigmoid and gradient terms are denormals, which x86 cores compute tens of
      times slower than normal floats; as terms of sums of per-pixel values many orders of
      magnitude larger, flushing them changes no loss, gradient or metric beyond float32
      rounding.

    These flags belong to the process, not the run: ``fit`` calls this at its start, before
    it trains or evaluates, so each run of a process that runs several uses its own.
    """
    if _FP32_PRECISION_API:
        value = "tf32" if cfg.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cudnn.rnn.fp32_precision = value  # conv and rnn alike, as the old flag
    else:  # torch < 2.9; the matmul flag is set_float32_matmul_precision("high"/"highest")
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.set_flush_denormal(True)  # CPU only; False (and nothing done) without SSE3
    if device is not None and device.type == "cuda" and not torch.cuda.is_initialized():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


# The training stream of a run moved to another device type after ``epoch``: its saved
# generator state fits only a generator of the old type (a CPU one's is 5056 bytes, a CUDA
# one's 16), so it goes on with this stream, the same on every rerun.
MOVED_RUN_STREAM = 0x6D6F766564  # "moved"


def restore_generator(
    generator: torch.Generator, saved: torch.Tensor, seed: int, epoch: int
) -> None:
    """Continue the saved random stream; from another device type, a new seeded one.

    The new stream is the same on every rerun, but not the one an uninterrupted run would
    have drawn: a warning says so.
    """
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    generator.manual_seed((seed * 1_000_003 + epoch) ^ MOVED_RUN_STREAM)
    warnings.warn(
        f"the checkpoint's random stream (epochs 1-{epoch}) was drawn on another "
        f"device type (its generator state has {saved.numel()} bytes, a "
        f"{generator.device.type} one {generator.get_state().numel()}); the run "
        f"continues on a {generator.device.type} device with a new random stream "
        f"from epoch {epoch + 1}, seeded from train.seed and the epoch, so its "
        "numbers will not match an uninterrupted run bit for bit",
        RuntimeWarning,
        stacklevel=3,
    )
