"""Shared fixtures: tiny datasets written in the real file formats, an isolated cache."""

from __future__ import annotations

import gzip
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


FAST_SET = "not slow"  # pyproject's -m: the default run


def pytest_configure(config):
    """Two xdist workers (pyproject's ``-n 2``) for the fast set alone. A run that selects
    slow tests (``-m slow``, or any other -m) runs in this one process: their real Ray
    clusters take both cores, and a module's tests share the Ray that ``shared_ray`` starts.
    Before xdist's own pytest_configure (trylast), which starts the workers."""
    if getattr(config.option, "numprocesses", None) and config.option.markexpr != FAST_SET:
        config.option.numprocesses = 0
        config.option.dist = "no"


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """The Ctrl-C tests send SIGINT to this process and to the commands it starts; a suite
    started where SIGINT is ignored (``nohup``, a shell's ``&``) would pass that on to them.
    Python's own handler here, and the default one in every child."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(autouse=True, scope="session")
def _optuna_schema_head_found_once():
    """Optuna finds its schema's head revision by loading each of its alembic migration
    scripts whenever an RDBStorage opens (some 0.3 s; a study opens one per rebuild of its
    tables). The installed Optuna's head is the same all session: it is found once. The
    version check itself (the database's version against that head) still runs."""
    try:
        from optuna.storages._rdb.storage import _VersionManager
    except ImportError:  # another Optuna: its own way
        yield
        return
    original = _VersionManager.get_head_version
    found: list[str] = []

    def get_head_version(self) -> str:
        if not found:
            found.append(original(self))
        return found[0]

    _VersionManager.get_head_version = get_head_version
    yield
    _VersionManager.get_head_version = original


def tiny_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 28, 28) uint8 images with structure (a bar at a random place) and noise."""
    rng = np.random.default_rng(seed)
    img = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i in range(n):
        r = rng.integers(4, 24)
        if i % 2:
            img[i, r - 2 : r + 2, 4:24] = 255
        else:
            img[i, 4:24, r - 2 : r + 2] = 255
    return img


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """Write ``array`` (uint8) as an IDX file (the MNIST format)."""
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(
    root: Path,
    *,
    layout: str = "flat",
    dataset: str = "mnist",
    n_train: int = 300,
    n_test: int = 100,
    gz: bool = True,
) -> Path:
    """MNIST-format files under ``root``, in the flat (<root>/mnist/*.gz) or torchvision layout."""
    folder = (
        root / dataset
        if layout == "flat"
        else root / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[dataset] / "raw"
    )
    rng = np.random.default_rng(1)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte", tiny_images(n, seed), gz=gz and layout == "flat"
        )
        write_idx(
            folder / f"{prefix}-labels-idx1-ubyte",
            rng.integers(0, 10, n).astype(np.uint8),
            gz=gz and layout == "flat",
        )
    return root


def write_amat(root: Path, *, n: tuple[int, int, int] = (200, 60, 60), gz: bool = True) -> Path:
    folder = root / "binarized_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in zip(("train", "valid", "test"), n, (0, 1, 2), strict=True):
        bits = (tiny_images(count, seed) > 127).astype(np.uint8).reshape(count, 784)
        text = "".join(" ".join(str(b) for b in row) + "\n" for row in bits)
        name = folder / f"binarized_mnist_{split}.amat"
        if gz:
            with gzip.open(str(name) + ".gz", "wt") as f:
                f.write(text)
        else:
            name.write_text(text)
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No test reads the user's cache or $VAE_STUDY_DATA, or uses more than one thread."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("VAE_STUDY_DATA", raising=False)
    torch.set_num_threads(1)


@pytest.fixture
def quick_figures(monkeypatch):
    """The report's figures saved as their PNG alone, at the report's resolution without a
    tight bounding box: for tests that read the report's words, not its files. The PDF and
    SVG written beside each PNG (``figure_files.save_figure``), with their fonts, are tested
    in test_compare."""
    from vae_study.report import figure_files

    def save(fig, path: Path) -> Path:
        fig.savefig(path, dpi=figure_files.DPI)
        return path

    monkeypatch.setattr(figure_files, "save_figure", save)


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


# ---------------------------------------------------------------------------------------
# One Ray per module for the slow tests that run studies in this process.


@pytest.fixture(scope="module")
def _module_ray():
    """Shuts down, at the end of the module, a Ray that ``shared_ray`` started in it."""
    started: list[bool] = []
    yield started
    if started:
        import ray

        ray.shutdown()


@pytest.fixture
def shared_ray(_module_ray):
    """A local Ray shared by the tests of a module that ask for it (as Ray's testing guide
    advises: a start and a stop cost seconds), started as a study starts its own
    (``cluster.start_ray``: loopback only, the owner-only token, SIGTERM and SIGHUP blocked
    in its processes). A driver run in the test finds it running, uses it and leaves it up
    (``driver._run_stages``). For tests whose trials need nothing from the test's own
    environment: Ray's processes were started before it (no variable set in the test
    reaches the trials)."""
    import ray

    if not ray.is_initialized():
        from vae_study.config.study import study_from_dict
        from vae_study.study.cluster import start_ray

        space = {"train.beta": {"choice": [1.0]}}
        study = study_from_dict(
            {"name": "shared", "ray": {"dashboard": False}, "search": {"space": space}}
        )
        start_ray(study)
        _module_ray.append(True)
    yield


@pytest.fixture
def own_ray():
    """For a test that starts a Ray or a cluster of its own: the module's shared Ray, if
    one is up, is shut down first (``shared_ray`` starts it again when next asked)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield
