"""The trainer on every device present: CPU always, CUDA when there is one.

The core tests are parametrised over ``DEVICES``; their CUDA cases carry the ``gpu`` marker
and skip without a GPU, so ``pytest -m gpu`` on a GPU machine runs them all and CI runs the
CPU cases in seconds. The GPU logic that needs no GPU (device numbering inside a trial,
TF32 and determinism flags, checkpoints mapped between devices, a resume whose random
stream was drawn on another device type) is tested on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import vae_study.core.device as device_module
from conftest import write_mnist
from study_factory import same_weights, small_run_config
from vae_study import metrics as M
from vae_study.config.run import RunConfig, TrainConfig, replace_keys
from vae_study.core import checkpoint as ckpt
from vae_study.core import train
from vae_study.core.train import configure_backends, fit, resolve_device
from vae_study.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
_on_cuda = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=_on_cuda)]
ACROSS = [
    pytest.param(a, b, marks=_on_cuda, id=f"{a}-to-{b}")
    for a, b in (("cpu", "cuda"), ("cuda", "cpu"))
]


def _config(root, device: str, **keys) -> RunConfig:
    return small_run_config(
        root, **{"train.device": device, "eval.val_examples": 50, "eval.nll_examples": 50, **keys}
    )


@pytest.fixture(autouse=True)
def _torch_flags():
    """configure_backends changes process-wide flags: put torch's back after each test."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    configure_backends(TrainConfig())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


# --- the core, on each device ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_a_training_epoch_moves_the_weights_on_the_device(mnist_root, device):
    cfg = _config(mnist_root, device, **{"train.epochs": 1})
    start = train.make_model(cfg, torch.device("cpu"))
    res = fit(cfg, final_eval=False)
    params = list(res.model.parameters())
    assert {p.device.type for p in params} == {device}
    assert all(p.dtype == torch.float32 for p in params)
    assert not same_weights(start, res.model)  # it trained
    assert torch.isfinite(torch.tensor(res.history[0][M.TRAIN_LOSS]))


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_the_same_device_gives_the_same_numbers(mnist_root, tmp_path, device):
    keys = {"train.epochs": 3, "data.binarize": "dynamic"}
    straight = fit(_config(mnist_root, device, **keys), out_dir=tmp_path / "a", final_eval=False)
    fit(
        _config(mnist_root, device, **{**keys, "train.epochs": 1}),
        out_dir=tmp_path / "b",
        final_eval=False,
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed = fit(_config(mnist_root, device, **keys), out_dir=tmp_path / "b", final_eval=False)
    assert not [w for w in seen if "random stream" in str(w.message)]  # the saved one goes on
    assert [h[M.EPOCH] for h in resumed.history] == [1, 2, 3]
    assert same_weights(straight.model, resumed.model)


@pytest.mark.parametrize(("first", "then"), ACROSS)
def test_resume_across_devices_continues_with_a_warning(mnist_root, tmp_path, first, then):
    fit(
        _config(mnist_root, first, **{"train.epochs": 1}),
        out_dir=tmp_path / "run",
        final_eval=False,
    )
    with pytest.warns(RuntimeWarning, match="new random stream from epoch 2"):
        res = fit(_config(mnist_root, then, **{"train.epochs": 3}), out_dir=tmp_path / "run")
    assert [h[M.EPOCH] for h in res.history] == [1, 2, 3]
    assert {p.device.type for p in res.model.parameters()} == {then}
    assert torch.isfinite(torch.tensor(res.final[M.TEST_CE_BOUND]))


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_gives_finite_test_metrics_and_float32_weights(mnist_root, device):
    res = fit(_config(mnist_root, device, **{"train.epochs": 1}))
    for key in (
        M.TEST_CE_BOUND,
        M.TEST_NEG_ELBO,
        M.TEST_RATE,
        M.TEST_DISTORTION,
        M.TEST_BOUND_GAP,
        M.VAL_CE_BOUND,
    ):
        assert torch.isfinite(torch.tensor(res.final[key])), key
    assert res.final[M.TEST_NEG_ELBO] == pytest.approx(
        res.final[M.TEST_RATE] + res.final[M.TEST_DISTORTION], rel=1e-5
    )
    assert res.final[M.TEST_BOUND_GAP] >= 0  # -ELBO >= -L_K on the same examples
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_trains_with_float32_weights(mnist_root, device):
    cfg = _config(mnist_root, device, **{"train.precision": "bfloat16", "train.epochs": 1})
    res = fit(cfg)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert torch.isfinite(torch.tensor(res.history[0][M.TRAIN_LOSS]))
    assert torch.isfinite(torch.tensor(res.final[M.TEST_CE_BOUND]))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_same_seed_same_device_gives_bit_identical_weights(mnist_root, device):
    cfg = _config(
        mnist_root,
        device,
        **{"model.arch": "conv", "train.epochs": 1, "data.train_subset": 96, "model.hidden": [16]},
    )
    a = fit(cfg, final_eval=False)
    b = fit(cfg, final_eval=False)
    assert same_weights(a.model, b.model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # Ask torch to name every op without a deterministic kernel on this device (alerts
        # only: the run must not need torch.use_deterministic_algorithms to be reproducible).
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            fit(cfg)
        finally:
            torch.use_deterministic_algorithms(False)
    alerts = [str(w.message) for w in seen if "deterministic" in str(w.message)]
    assert alerts == []


# --- numerics flags, without a GPU ----------------------------------------------------------


def _tf32_flags() -> dict[str, object]:
    if device_module._FP32_PRECISION_API:
        return {
            "matmul": torch.backends.cuda.matmul.fp32_precision,
            "conv": torch.backends.cudnn.conv.fp32_precision,
        }
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "conv": torch.backends.cudnn.allow_tf32,
    }


@pytest.mark.parametrize("tf32", [False, True])
def test_fit_sets_tf32_and_deterministic_cudnn_before_training_and_evaluation(
    mnist_root, monkeypatch, tf32
):
    configure_backends(TrainConfig(tf32=not tf32))  # the other way round first
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    seen: dict[str, object] = {}

    def spy(*args, **kwargs):
        seen.update(
            _tf32_flags(),
            deterministic=torch.backends.cudnn.deterministic,
            benchmark=torch.backends.cudnn.benchmark,
        )
        return final_metrics(*args, **kwargs)

    final_metrics = train.final_metrics
    monkeypatch.setattr(train, "final_metrics", spy)
    fit(_config(mnist_root, "cpu", **{"train.epochs": 1, "train.tf32": tf32}))
    if device_module._FP32_PRECISION_API:
        want = "tf32" if tf32 else "ieee"
        assert torch.backends.cudnn.rnn.fp32_precision == want
        if not tf32:  # float32 products: what set_float32_matmul_precision calls "highest"
            assert torch.get_float32_matmul_precision() == "highest"
    else:
        want = tf32
    expected = {"matmul": want, "conv": want, "deterministic": True, "benchmark": False}
    assert seen == expected  # at evaluation
    assert {
        **_tf32_flags(),
        "deterministic": torch.backends.cudnn.deterministic,
        "benchmark": torch.backends.cudnn.benchmark,
    } == expected  # after fit


@pytest.mark.parametrize("tf32", [False, True])
def test_configure_backends_on_torch_without_fp32_precision_uses_the_allow_tf32_flags(tf32):
    # torch < 2.9 has only the allow_tf32 flags; on a newer torch, reading them after the
    # new settings were used is an error, hence a fresh process.
    code = (
        "import torch\nfrom vae_study.core import device as train\n"
        "from vae_study.config.run import TrainConfig\ntrain._FP32_PRECISION_API = False\n"
        f"train.configure_backends(TrainConfig(tf32={tf32}))\n"
        "print(torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, "
        "torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == [str(tf32), str(tf32), "high" if tf32 else "highest", "True"]


def test_cublas_workspace_is_set_before_cuda_starts_and_left_alone_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_backends(TrainConfig(), torch.device("cpu"))
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # a CPU run changes no environment
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    configure_backends(TrainConfig(), torch.device("cuda", 0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_backends(TrainConfig(), torch.device("cuda", 0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's choice stands


def test_tf32_is_a_boolean_key():
    assert replace_keys(RunConfig(), {"train.tf32": True}).train.tf32 is True
    with pytest.raises(ConfigError, match="train.tf32"):
        replace_keys(RunConfig(), {"train.tf32": "yes"})


# --- cuda:N inside a trial, without a GPU ---------------------------------------------------


@pytest.fixture
def gpus(monkeypatch):
    """A fake CUDA runtime that sees ``n`` GPUs, restricted by ``visible`` (or not)."""

    def setup(n: int, visible: str | None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return setup


def test_cuda_n_counts_the_gpus_the_process_sees(gpus):
    gpus(2, None)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"'cuda:2'.* sees 2 GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    gpus(2, "5,7")  # torch's numbering first: cuda:1 is GPU 7
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_trial_given_one_gpu_finds_it_under_its_machine_number(gpus):
    gpus(1, "3")  # Ray gave this trial GPU 3: the process sees it as cuda:0
    assert resolve_device("cuda:3") == torch.device("cuda", 0)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:1")
    msg = str(err.value)
    assert "'cuda:1'" in msg and "only GPU 3" in msg and "CUDA_VISIBLE_DEVICES='3'" in msg
    assert "use cuda or auto" in msg
    gpus(1, "GPU-8a3c")  # a UUID names no number
    with pytest.raises(ConfigError, match="only GPU GPU-8a3c"):
        resolve_device("cuda:1")


def test_no_gpu_refuses_cuda_and_auto_is_the_cpu(gpus):
    gpus(0, "")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")


# --- checkpoints between devices, without a GPU ---------------------------------------------


def test_checkpoint_load_maps_every_tensor_to_the_device_but_the_generator(mnist_root, tmp_path):
    fit(
        _config(mnist_root, "cpu", **{"train.epochs": 1}),
        out_dir=tmp_path / "run",
        final_eval=False,
    )
    # "meta" stands in for a GPU: the same mapping code, no memory, no device needed.
    state = ckpt.load(tmp_path / "run" / "checkpoint", map_location="meta")
    assert {t.device.type for t in state.model.values()} == {"meta"}
    moments = [t for s in state.optimizer["state"].values() for t in s.values()]
    assert moments and {t.device.type for t in moments} == {"meta"}
    assert state.generator.device.type == "cpu" and state.generator.dtype == torch.uint8


def test_a_checkpoint_drawn_on_cuda_resumes_on_the_cpu_with_a_warning(mnist_root, tmp_path):
    """A GPU run's checkpoint continued on a CPU: its generator state is a CUDA one (16
    bytes: seed and offset), which a CPU generator (5056 bytes) cannot take. The run goes
    on with a new seeded stream and says so once. The other direction (a CPU checkpoint
    resumed on a GPU) is the same code path in ``restore_generator``, the sizes swapped; it
    runs for real in ``test_resume_across_devices_continues_with_a_warning`` on a GPU."""
    cfg = _config(mnist_root, "cpu", **{"train.epochs": 3})
    fit(
        _config(mnist_root, "cpu", **{"train.epochs": 1}),
        out_dir=tmp_path / "run",
        final_eval=False,
    )
    state = ckpt.load(tmp_path / "run" / "checkpoint")
    state.generator = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    ckpt.save(tmp_path / "run" / "checkpoint", state)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = fit(cfg, out_dir=tmp_path / "run")
    moved = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(moved) == 1, moved
    assert "16 bytes" in moved[0] and "new random stream from epoch 2" in moved[0]
    assert "not match an uninterrupted run bit for bit" in moved[0]
    assert [h[M.EPOCH] for h in res.history] == [1, 2, 3]
    assert res.history[-1][M.TRAIN_LOSS] < res.history[0][M.TRAIN_LOSS]  # it went on training
    assert torch.isfinite(torch.tensor(res.final[M.TEST_CE_BOUND]))
    # The continued run wrote a CPU stream: resuming it again warns no more.
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(replace_keys(cfg, {"train.epochs": 4}), out_dir=tmp_path / "run", final_eval=False)
    assert not [w for w in seen if "random stream" in str(w.message)]


def test_a_checkpoint_written_before_train_tf32_existed_still_resumes(mnist_root, tmp_path):
    fit(
        _config(mnist_root, "cpu", **{"train.epochs": 1}),
        out_dir=tmp_path / "run",
        final_eval=False,
    )
    state = ckpt.load(tmp_path / "run" / "checkpoint")
    del state.config["train"]["tf32"]
    ckpt.save(tmp_path / "run" / "checkpoint", state)
    res = fit(_config(mnist_root, "cpu"), out_dir=tmp_path / "run", final_eval=False)
    assert [h[M.EPOCH] for h in res.history] == [1, 2]
    with pytest.raises(CheckpointError, match="train.tf32: False -> True"):
        fit(
            _config(mnist_root, "cpu", **{"train.epochs": 3, "train.tf32": True}),
            out_dir=tmp_path / "run",
            final_eval=False,
        )


# --- the GPU check script -------------------------------------------------------------------


@pytest.mark.slow  # the whole script, each step on the CPU
def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    root = write_mnist(tmp_path / "data")
    env = {
        **os.environ,
        "VAE_STUDY_DATA": str(root),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "2",
    }
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    summary = out[out.index("<!-- gpu_check summary -->") :]
    for line in (
        "| epoch, vae_study |",
        "| test NLL, vae_study (chunk 8192) |",
        "| test NLL, vae_study (chunk 1024) |",
    ):
        assert line in summary, summary
    # Without CUDA, pytest -m gpu collects the CUDA tests and skips every one of them.
    assert re.search(r"\| gpu tests \| \d+ skipped, \d+ deselected \|", summary), summary
    assert "dry run" in summary and "FAILED" not in summary and "goal" not in summary
