"""The CPUs and GPUs each trial of a study gets: a GPU shared by a few trials under
``gpus_per_trial: auto``, and a request the cluster can never meet refused before anything is
scheduled."""

from __future__ import annotations

import math

import ray

from vae_study.config.study import StudyConfig
from vae_study.errors import StudyError

# ``auto`` packs at most this many trials on one GPU. A trial holds its CUDA context (about
# 0.5 GB), its float32 copy of the splits (about 210 MiB for MNIST), its model and Adam state
# (a few MB) and the test NLL's decoder outputs (eval.chunk_size x 784 floats, 26 MB at the
# default, a few times over): about 1 GB, so four fit a 16 GB GPU with room to spare and any
# GPU a study is likely to meet. More concurrent trials than that wait for a share.
MAX_TRIALS_PER_GPU = 4


def gpu_share(
    gpus_per_trial: float | str, gpus_total: float, max_concurrent: int, device: str = "auto"
) -> float:
    """GPUs per trial: ``auto`` gives each of ``max_concurrent`` trials an equal share of the
    cluster's GPUs, rounded down to 1/n so n trials pack one GPU, at most one whole GPU and at
    least 1/MAX_TRIALS_PER_GPU; no GPU in the cluster, or ``train.device: cpu``: 0 (the CPU).
    A number is kept as it is."""
    if gpus_per_trial != "auto":
        return float(gpus_per_trial)
    if gpus_total <= 0 or device == "cpu":
        return 0.0
    share = gpus_total / max_concurrent
    if share >= 1:
        return 1.0
    return 1.0 / min(math.ceil(1.0 / share), MAX_TRIALS_PER_GPU)


def trial_resources(study: StudyConfig, cpus: float, gpus_total: float) -> dict[str, float]:
    """CPUs and GPUs per trial on a cluster of ``cpus`` CPUs and ``gpus_total`` GPUs; a
    request the cluster can never meet is a ``StudyError``."""
    want_cpu = study.resources.cpus_per_trial
    g = gpu_share(
        study.resources.gpus_per_trial,
        gpus_total,
        study.search.max_concurrent,
        study.base.train.device,
    )
    if g > 0 and gpus_total == 0:
        raise StudyError(
            f"resources.gpus_per_trial={g}, but the Ray cluster has no GPU; use "
            "gpus_per_trial: 0 (CPU) or auto"
        )
    if g == 0 and study.base.train.device.startswith("cuda"):
        raise StudyError(
            f"train.device: {study.base.train.device}, but the Ray cluster has no "
            "GPU, so no trial gets a share; use train.device: auto or cpu"
        )
    if g > gpus_total:
        raise StudyError(
            f"resources.gpus_per_trial={g}, but the whole cluster has {gpus_total:g} GPUs"
        )
    if want_cpu > cpus:
        raise StudyError(
            f"resources.cpus_per_trial={want_cpu:g}, but the whole cluster has "
            f"{cpus:g} CPUs; no trial could ever start"
        )
    return {"cpu": want_cpu, "gpu": float(g)}


def resolve_resources(study: StudyConfig) -> dict[str, float]:
    """CPUs and GPUs per trial, checked against the cluster before anything is scheduled."""
    total = ray.cluster_resources()
    return trial_resources(study, total.get("CPU", 0.0), total.get("GPU", 0.0))
