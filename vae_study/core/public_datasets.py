"""The public datasets, read from their original files: MNIST and Fashion-MNIST (IDX files,
through torchvision's classes), Larochelle's binarized MNIST (``.amat``) and CIFAR-10
(python pickles, through torchvision). Each split is one compact tensor of uint8 levels,
flat (N, C*H*W) in channel-major order.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vae_study.core.data_root import default_cache_dir, error_reason
from vae_study.core.splits import IMAGE_SHAPE, Split
from vae_study.errors import DataError

NUM_PIXELS = 28 * 28  # the MNIST family's values per image
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_FOLDER = "cifar-10-batches-py"

# torchvision class name and the folder of the shared (flat) layout, per dataset.
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_AMAT_SPLITS = ("train", "valid", "test")


def _how_to_fix(dataset: str) -> str:
    return (
        f"put the {dataset} files under one of these paths (or set data.root / "
        "VAE_STUDY_DATA to the folder that holds them), or run once where the internet is "
        "reachable so they can be downloaded"
    )


# ---------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST through torchvision.


def torchvision_root(dataset: str, root: Path) -> Path:
    """The folder to give torchvision's class for ``dataset``, finding or fetching its files.

    Accepts torchvision's own layout (<root>/MNIST/raw/...) and the flat layout of
    ../shared/data (<root>/mnist/*.gz, decompressed once into the cache); else downloads.
    """
    tried: list[str] = []
    cls_name = TORCHVISION_CLASSES[dataset]
    # 1. torchvision's own layout: <root>/MNIST/raw/train-images-idx3-ubyte ...
    tv_raw = root / cls_name / "raw"
    tried.append(str(tv_raw))
    if _has_idx(tv_raw, gz=False):
        return root
    # 2. the flat layout of ../shared/data: <root>/mnist/train-images-idx3-ubyte.gz ...
    flat = root / dataset
    tried.append(str(flat))
    if _has_idx(flat, gz=True) or _has_idx(flat, gz=False):
        return _extract_flat(flat, cls_name)
    # 3. download through torchvision into <root> (it prints its own progress).
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, cls_name)(str(root), train=True, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError ...
        raise DataError(
            f"dataset {dataset} not found and its download failed ({error_reason(exc)}); "
            "paths tried: " + ", ".join(tried) + "; " + _how_to_fix(dataset)
        ) from None
    return root


def read_torchvision(dataset: str, root: Path) -> tuple[Split, Split]:
    """(train, test) of mnist or fashion_mnist under ``root``: (N, 784) uint8 levels, labels."""
    import torchvision.datasets as tvd

    return _from_class(getattr(tvd, TORCHVISION_CLASSES[dataset]), torchvision_root(dataset, root))


def _has_idx(folder: Path, *, gz: bool) -> bool:
    names = _IDX_FILES[True] + _IDX_FILES[False]
    return all((folder / (n + (".gz" if gz else ""))).is_file() for n in names)


def _extract_flat(flat: Path, cls_name: str) -> Path:
    """Decompress a flat folder of IDX files into torchvision's layout in the cache.

    Keyed by the source folder, written atomically, reused while the sources are unchanged.
    """
    key = hashlib.sha1(str(flat.resolve()).encode()).hexdigest()[:12]
    tv_root = default_cache_dir() / "idx" / key
    raw = tv_root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in _IDX_FILES[True] + _IDX_FILES[False]:
        src = flat / (name + ".gz")
        if not src.is_file():
            src = flat / name
        dst = raw / name
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.replace(tmp, dst)
        except (OSError, EOFError) as exc:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"cannot read {src}: {exc}; the file is damaged, replace it") from None
    return tv_root


def _from_class(cls: type, root: Path) -> tuple[Split, Split]:
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as exc:  # a truncated or corrupt IDX file fails deep in torchvision
            raise DataError(
                f"cannot read {cls.__name__} from {root}: "
                f"{exc or type(exc).__name__}; the files are damaged, replace "
                "them"
            ) from None
        images = ds.data  # (N, 28, 28) uint8, read straight from the IDX file
        if images.ndim != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE[1:]:
            raise DataError(
                f"{cls.__name__} under {root}: expected 28x28 images, got shape "
                f"{tuple(images.shape)}"
            )
        x = images.reshape(images.shape[0], NUM_PIXELS)  # (N, 784) uint8 levels
        splits.append(Split(x, ds.targets.long()))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------
# Larochelle's binarized MNIST (.amat: 784 space-separated 0/1 a line).


def read_amat(path: Path) -> torch.Tensor:
    """Read an ``.amat`` or ``.amat.gz`` file into a (N, 784) float tensor of 0s and 1s."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the file is damaged, replace it") from None
    chars = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )
    newline, zero, one = ord("\n"), ord("0"), ord("1")
    lines = int((chars == newline).sum())
    if chars.numel() and int(chars[-1]) != newline:
        lines += 1
    is_digit = (chars == zero) | (chars == one)
    blank = (chars == ord(" ")) | (chars == newline) | (chars == ord("\r"))
    digits = chars[is_digit]
    if bool((~is_digit & ~blank).any()) or lines == 0 or digits.numel() != lines * NUM_PIXELS:
        raise DataError(
            f"{path} is not a binarized-MNIST .amat file: expected lines of 784 "
            f"0/1 values, found {digits.numel()} values on {lines} lines"
        )
    return (digits - zero).float().reshape(lines, NUM_PIXELS)


def _amat_path(root: Path, split: str) -> Path | None:
    for folder in (root / "binarized_mnist", root):
        for suffix in (".amat", ".amat.gz"):
            p = folder / f"binarized_mnist_{split}{suffix}"
            if p.is_file():
                return p
    return None


def read_binarized(root: Path) -> tuple[Split, Split, Split]:
    """(train, valid, test) of binarized_mnist under ``root`` (downloaded if missing):
    (N, 784) uint8 levels 0/255, no labels."""
    paths = {s: _amat_path(root, s) for s in _AMAT_SPLITS}
    if any(p is None for p in paths.values()):
        target = root / "binarized_mnist"
        try:
            from torchvision.datasets.utils import download_url

            for split in _AMAT_SPLITS:
                if paths[split] is None:
                    name = f"binarized_mnist_{split}.amat"
                    download_url(_AMAT_URL + name, str(target), filename=name)
        except Exception as exc:
            tried = [str(root / "binarized_mnist"), str(root)]
            raise DataError(
                "dataset binarized_mnist not found (binarized_mnist_{train,valid,test}.amat[.gz]) "
                f"and its download failed ({error_reason(exc)}); paths tried: "
                + ", ".join(tried)
                + "; "
                + _how_to_fix("binarized_mnist")
            ) from None
        paths = {s: _amat_path(root, s) for s in _AMAT_SPLITS}
    # Stored as uint8 levels 0/255, a quarter of the floats; presented as exact 0.0/1.0.
    tr, va, te = (
        Split(read_amat(paths[s]).mul_(255).to(torch.uint8), None)  # type: ignore[arg-type]
        for s in _AMAT_SPLITS
    )
    return tr, va, te


# ---------------------------------------------------------------------------------------
# CIFAR-10 through torchvision (python pickles: data_batch_1..5, test_batch, batches.meta).


def read_cifar10(root: Path) -> tuple[Split, Split]:
    """(train, test) of CIFAR-10 from ``root``/cifar-10-batches-py (never downloaded):
    (N, 3072) uint8 levels in channel-major order, labels."""
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir():
        raise DataError(
            f"dataset cifar10 not found: expected the folder {folder} (data_batch_1 ... "
            "data_batch_5, test_batch, batches.meta, as unpacked from cifar-10-python.tar.gz "
            "of https://www.cs.toronto.edu/~kriz/cifar.html); put it there, or set data.root "
            f"/ VAE_STUDY_DATA to the folder that holds {CIFAR10_FOLDER} (it is not "
            "downloaded)"
        )
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False):
        try:  # torchvision checks every file's md5 sum first
            ds = CIFAR10(str(root), train=train, download=False)
        except Exception as exc:
            raise DataError(
                f"cannot read CIFAR-10 from {folder}: {error_reason(exc)}; the files are missing "
                "or damaged (their md5 sums are checked), replace them with those of "
                "cifar-10-python.tar.gz"
            ) from None
        images = torch.from_numpy(ds.data)  # (N, 32, 32, 3) uint8, channels last
        x = images.permute(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072) channel-major
        splits.append(Split(x, torch.tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1]
