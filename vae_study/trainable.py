"""The trainable: one Ray Tune trial = one ``fit`` of the trial's configuration."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from . import metrics as M
from . import results as R
from .data import Source, prepare
from .errors import TrainingDiverged
from .search import decode_params
from .study_config import StudyConfig


def train_trial(config: dict[str, Any], *, study: StudyConfig, source: Source) -> None:
    """Ray Tune function trainable: fit the trial's configuration, report every epoch.

    ``source`` is the dataset as read once by the driver (through Ray's object store); the
    trial presents it as its own ``data`` section says (train_subset, binarize), with the
    same validation and test examples as every other trial.

    Resumes from ``tune.get_checkpoint()`` when Ray restarts the trial. A diverged run is
    reported once with ``diverged: 1`` and ends normally, so Ray does not retry a
    deterministic failure and the searcher records it as failed.
    """
    import torch

    from .train import fit, resolve_device

    params = decode_params(
        study.search.space, {k: v for k, v in config.items() if not k.startswith("_")}
    )
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial without a GPU share: hide
        # every GPU from it, or torch (and "auto") would use GPU 0 unasked and unaccounted.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = trial_device(
        study.trial_config(params).train.device, gpu_ids, torch.cuda.is_available()
    )
    run = study.trial_config({**params, "train.device": device})
    torch.set_num_threads(max(1, int(study.resources.cpus_per_trial)))
    # Presented straight onto the trial's device: on a GPU the run holds the device copy of
    # its splits only, no host copy beside it (the source stays in Ray's object store).
    data = prepare(
        source, run.data, dequantize=run.dequantized, device=resolve_device(run.train.device)
    )
    used = {
        M.TRAIN_EXAMPLES: len(data.train),
        M.TRAIN_NOISE: data.train_noise,
        R.DEVICE_KEY: device,
        R.GPU_IDS_KEY: ",".join(gpu_ids),
    }
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per checkpoint
    work = Path(tempfile.mkdtemp(prefix="vae_study_trial_"))
    restored = tune.get_checkpoint()

    node = ray.get_runtime_context().get_node_id()

    def report(row: dict[str, Any], ckpt_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**_reportable(row), **used, R.NODE_KEY: node}, checkpoint=checkpoint)

    try:
        if restored is not None:
            with restored.as_directory() as folder:
                resume = work / "restored"
                shutil.copytree(folder, resume)
            fit(run, out_dir=work / "run", resume_from=resume, data=data, on_epoch=report)
        else:
            fit(run, out_dir=work / "run", data=data, on_epoch=report)
    except TrainingDiverged as exc:
        tune.report(
            {R.DIVERGED_KEY: 1, R.ERROR_KEY: str(exc), M.EPOCH: exc.epoch, R.NODE_KEY: node}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def trial_device(device: str, gpu_ids: list[str], cuda_available: bool) -> str:
    """The ``train.device`` a trial runs with, from its study's and the GPUs Ray gave it.

    Without a GPU share a trial runs on the CPU (``auto`` included); asking for ``cuda`` without
    one is refused before the study starts (``study_config``). With a share the trial sees its
    GPU, whatever its number on the machine, as ``cuda:0``: ``auto`` and ``cuda`` are that GPU.
    A node that advertises GPUs to Ray while torch sees none (no driver) runs ``auto`` on the
    CPU; an explicit ``cuda`` there fails in ``fit`` with a message naming what it sees.
    """
    if not gpu_ids:
        return "cpu"
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device


def _reportable(row: dict[str, Any]) -> dict[str, Any]:
    """Ray wants flat scalars; the per-dimension KL list travels as text."""
    out = {}
    for k, v in row.items():
        out[k] = " ".join(f"{x:.5g}" for x in v) if isinstance(v, list) else v
    return out
