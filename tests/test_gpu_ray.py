"""The GPU side of a study under a real Ray, without a GPU: Ray is told the node has GPUs
(``ray.init(num_gpus=...)``), so the shares, the packing and each trial's device are the
ones a GPU box gives. On a machine with CUDA the last test trains on it."""

from __future__ import annotations

import pytest
import torch

from study_factory import tiny_study
from vae_study.config.study import study_from_dict
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, RESULTS_FILE
from vae_study.study.driver import run_study

pytestmark = pytest.mark.slow


def _run_on_a_cluster_with_gpus(study, num_gpus: float):
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=num_gpus,
        include_dashboard=False,
        logging_level="ERROR",
    )
    try:
        folder = run_study(study, verbose=0)
    finally:
        ray.shutdown()
    return R.read_results(folder / RESULTS_FILE)


def test_auto_packs_two_trials_on_one_gpu_and_each_uses_the_gpu_ray_gave(tmp_path):
    study = study_from_dict(
        tiny_study(
            tmp_path,
            **{
                "train.device": "auto",
                "resources.gpus_per_trial": "auto",
                "search.num_trials": 2,
                "search.max_concurrent": 2,
            },
        )
    )
    table = _run_on_a_cluster_with_gpus(study, num_gpus=1)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    # Both trials held half of GPU 0 at once (auto: 1 GPU / 2 concurrent trials) ...
    assert set(table[R.GPU_IDS_KEY].astype(str)) == {"0"}
    # ... and trained on it where torch sees it; on this node Ray's GPU is only declared.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert set(table[R.DEVICE_KEY]) == {expected}


def test_a_trial_without_a_gpu_share_runs_on_the_cpu_on_a_gpu_node(tmp_path):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial that asks for no GPU: with
    train.device auto it would train on GPU 0 unaccounted. It gets the CPU and no GPU ids."""
    study = study_from_dict(
        tiny_study(
            tmp_path,
            **{
                "train.device": "auto",
                "resources.gpus_per_trial": 0,
                "search.num_trials": 2,
                "search.max_concurrent": 2,
            },
        )
    )
    table = _run_on_a_cluster_with_gpus(study, num_gpus=2)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    assert set(table[R.DEVICE_KEY]) == {"cpu"}
    assert table[R.GPU_IDS_KEY].isna().all()  # no GPU given: an empty cell


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_trials_share_a_real_gpu(tmp_path):
    study = study_from_dict(
        tiny_study(
            tmp_path,
            **{
                "train.device": "auto",
                "resources.gpus_per_trial": 0.5,
                "search.num_trials": 2,
                "search.max_concurrent": 2,
            },
        )
    )
    table = _run_on_a_cluster_with_gpus(study, num_gpus=torch.cuda.device_count())
    assert set(table["status"]) == {COMPLETED} and set(table[R.DEVICE_KEY]) == {"cuda"}
