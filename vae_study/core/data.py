"""Datasets as tensors on the training device.

``read_source`` reads a dataset once (MNIST, Fashion-MNIST and CIFAR-10 through torchvision's
own classes from the original files, binarized MNIST from Larochelle's ``.amat`` files, a
researcher's own images from ``.npz``/``.npy`` files or image folders) into one compact
tensor per split: 8-bit pixels stay uint8 until ``prepare`` presents them as floats on the
trial's device. Every split is flat, (N, D) with D = C * H * W in channel-major order; the
image shape (C, H, W) travels beside it (``Source.shape``, ``Datasets.shape``). ``Batches``
then serves shuffled mini-batches by index permutation on the trial's device, so the hot
loop never touches PIL, a DataLoader or the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vae_study.config.run import DataConfig
from vae_study.errors import DataError

# The MNIST family's images (mnist, fashion_mnist, binarized_mnist); other datasets carry
# their own shape (Source.shape).
IMAGE_SHAPE = (1, 28, 28)
NUM_PIXELS = 28 * 28
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_FOLDER = "cifar-10-batches-py"

# torchvision class name and the folder of the shared (flat) layout, per dataset.
_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_AMAT_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """One split: images flattened to (N, D) floats in [0, 1]; labels (N,) or None.

    In a ``Source`` (as read, before ``prepare``), 8-bit images are uint8 pixel levels 0-255
    instead: one copy a quarter the size of float32.
    """

    x: torch.Tensor  # (N, D) float32, D = C * H * W (784 for MNIST); in a Source maybe uint8
    labels: torch.Tensor | None  # (N,) int64; binarized_mnist has no labels

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        labels = None if self.labels is None else self.labels.to(device)
        return Split(self.x.to(device, non_blocking=True), labels)


@dataclass(frozen=True)
class Datasets:
    """Train, validation and test splits, on one device, presented as configured."""

    train: Split
    val: Split  # fixed: the same examples and the same draw in every trial
    test: Split  # fixed likewise
    # How each training batch is drawn from the stored train.x: NOISE_NONE (as stored),
    # NOISE_BERNOULLI (dynamic binarization of grey levels) or NOISE_UNIFORM (dequantisation).
    train_noise: str = "none"
    # (channels, height, width) of one example; x holds the flat rows, channel-major.
    shape: tuple[int, int, int] = (1, 28, 28)

    def to(self, device: torch.device | str) -> Datasets:
        return Datasets(
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.train_noise,
            self.shape,
        )


# ---------------------------------------------------------------------------------------
# Where the files are.


def default_cache_dir() -> Path:
    """The per-user cache folder: $XDG_CACHE_HOME/vae_study or ~/.cache/vae_study."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae_study"


def resolve_root(root: str | None) -> Path:
    """data.root, else $VAE_STUDY_DATA, else the per-user cache's data folder; one that
    exists and is not a folder is a ``DataError`` naming where it came from."""
    if root:
        path, what = Path(root).expanduser(), "data.root"
    elif os.environ.get("VAE_STUDY_DATA"):
        path, what = Path(os.environ["VAE_STUDY_DATA"]).expanduser(), "VAE_STUDY_DATA"
    else:
        path, what = default_cache_dir() / "data", "the data cache"
    if os.path.exists(path) and not path.is_dir():
        raise DataError(f"{what}: {path} is not a folder; give the folder that holds the data")
    return path


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
    cls_name = _TORCHVISION[dataset]
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
            f"dataset {dataset} not found and its download failed ({_reason(exc)}); paths tried: "
            + ", ".join(tried)
            + "; "
            + _how_to_fix(dataset)
        ) from None
    return root


def _read_torchvision(dataset: str, root: Path) -> tuple[Split, Split]:
    import torchvision.datasets as tvd

    return _from_class(getattr(tvd, _TORCHVISION[dataset]), torchvision_root(dataset, root))


def _reason(exc: BaseException) -> str:
    """A download error in one line: torchvision's own messages span several."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


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


def _read_binarized(root: Path) -> tuple[Split, Split, Split]:
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
                f"and its download failed ({_reason(exc)}); paths tried: "
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


def _read_cifar10(root: Path) -> tuple[Split, Split]:
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
                f"cannot read CIFAR-10 from {folder}: {_reason(exc)}; the files are missing "
                "or damaged (their md5 sums are checked), replace them with those of "
                "cifar-10-python.tar.gz"
            ) from None
        images = torch.from_numpy(ds.data)  # (N, 32, 32, 3) uint8, channels last
        x = images.permute(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072) channel-major
        splits.append(Split(x, torch.tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------
# A researcher's own images: .npz / .npy files and image folders.

_SPLITS = ("train", "val", "test")  # val optional everywhere
_CHANNELS = (1, 3)
_CHUNK_BYTES = 1 << 26  # values checked and converted per slice of a memory-mapped array


def _read_files(cfg: DataConfig) -> Source:
    """data.dataset npz (one file, read whole) or npy (a folder, memory-mapped)."""
    import numpy as np  # with torchvision; only file datasets need it

    assert cfg.path is not None  # DataConfig requires it
    path = Path(cfg.path)
    if cfg.dataset == "npy":
        return _source_from_arrays(cfg, _npy_arrays(path))
    if not path.is_file():
        raise DataError(
            f"data.path: {path} does not exist (or is not a file); expected an .npz file "
            "with arrays train, test and optionally val (np.savez(path, train=..., test=...))"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip, truncated ...
        raise DataError(
            f"data.path: {path} cannot be read as an .npz file ({_reason(exc)}); write it "
            "with np.savez(path, train=..., test=...)"
        ) from None
    with archive:
        arrays = _npz_arrays(archive, path)
    return _source_from_arrays(cfg, arrays)


def _npz_arrays(archive: Any, path: Path) -> dict[str, tuple[Any, str]]:
    """Each split and label array of an open .npz file, read whole."""
    arrays: dict[str, tuple[Any, str]] = {}  # key -> (array, where it is, for messages)
    keys = set(archive.files)
    for key in ("train", "test"):
        if key not in keys:
            raise DataError(
                f"data.path: {path} has no array {key!r} (it holds: "
                f"{', '.join(sorted(keys)) or 'nothing'}); save the splits as "
                "np.savez(path, train=..., test=..., val=...)"
            )
    for key in keys & {*_SPLITS, *(f"{s}_labels" for s in _SPLITS)}:
        where = f"{path}, array {key!r}"
        try:
            arrays[key] = (archive[key], where)  # read whole
        except Exception as exc:  # object arrays need pickle, which stays off
            raise DataError(
                f"data.path: {where} cannot be read ({_reason(exc)}); store images as "
                "uint8 levels 0-255 or floats in [0, 1], labels as integers"
            ) from None
    return arrays


def _npy_arrays(path: Path) -> dict[str, tuple[Any, str]]:
    """Each split and label array of a folder of .npy files, memory-mapped."""
    import numpy as np

    if not path.is_dir():
        raise DataError(
            f"data.path: {path} is not a folder; with data.dataset: npy it is the folder "
            "holding train.npy, test.npy and optionally val.npy (np.save)"
        )
    arrays: dict[str, tuple[Any, str]] = {}
    for key in (*_SPLITS, *(f"{s}_labels" for s in _SPLITS)):
        file = path / f"{key}.npy"
        if not file.is_file():
            if key in ("train", "test"):
                raise DataError(
                    f"data.path: {file} does not exist; the folder {path} must hold "
                    "train.npy and test.npy (and optionally val.npy), written by np.save"
                )
            continue
        try:
            arrays[key] = (np.load(file, mmap_mode="r", allow_pickle=False), str(file))
        except Exception as exc:
            raise DataError(
                f"data.path: {file} cannot be read as an .npy array ({_reason(exc)}); "
                "store images as uint8 levels 0-255 or floats in [0, 1] with np.save"
            ) from None
    return arrays


def _source_from_arrays(cfg: DataConfig, arrays: dict[str, tuple[Any, str]]) -> Source:
    splits: dict[str, Split] = {}
    shapes: dict[str, tuple[tuple[int, int, int], str]] = {}
    kinds = []
    for name in _SPLITS:
        if name not in arrays:
            if f"{name}_labels" in arrays:
                raise DataError(
                    f"data.path: {arrays[f'{name}_labels'][1]} has labels but there is no "
                    f"{name} split; add the images or remove the labels"
                )
            continue
        array, where = arrays[name]
        x, shape, kind = _image_tensor(array, where, binary=cfg.binary)
        shapes[name] = (shape, where)
        kinds.append(kind)
        labels = None
        if f"{name}_labels" in arrays:
            labels = _labels(*arrays[f"{name}_labels"], n=len(x))
        splits[name] = Split(x, labels)
    _same_shape(shapes)
    pixels = (
        PIXELS_BINARY
        if cfg.binary
        else PIXELS_8BIT
        if all(k == PIXELS_8BIT for k in kinds)
        else PIXELS_CONTINUOUS
    )
    shape = shapes["train"][0]
    return Source(splits["train"], splits["test"], splits.get("val"), shape, pixels)


def _same_shape(shapes: dict[str, tuple[tuple[int, int, int], str]]) -> None:
    train_shape, train_where = shapes["train"]
    for shape, where in shapes.values():
        if shape != train_shape:
            raise DataError(
                f"data: {where} holds images of shape (C, H, W) = {shape}, but {train_where} "
                f"holds {train_shape}; every split must have the same image shape"
            )


def _image_layout(
    shape: tuple[int, ...], where: str
) -> tuple[tuple[int, ...] | None, tuple[int, int, int]]:
    """(axis order to channels-first or None, (C, H, W)) of an array of images.

    (N, H, W): grey. (N, C, H, W) or (N, H, W, C) with C in {1, 3}: the axis that is 1 or 3
    holds the channels; when both axis 1 and the last axis are (such as (N, 3, 32, 3)) the
    array is read channels-first, torch's convention.
    """
    if len(shape) == 3:
        return None, (1, shape[1], shape[2])
    if len(shape) == 4:
        if shape[1] in _CHANNELS:
            return None, (shape[1], shape[2], shape[3])
        if shape[3] in _CHANNELS:
            return (0, 3, 1, 2), (shape[3], shape[1], shape[2])
    raise DataError(
        f"data: {where} has shape {tuple(shape)}; expected images shaped (N, H, W) (grey), "
        "(N, C, H, W) or (N, H, W, C) with C = 1 or 3 channels; reshape the array"
    )


def _image_tensor(
    array: Any, where: str, *, binary: bool
) -> tuple[torch.Tensor, tuple[int, int, int], str]:
    """An image array checked and flattened: ((N, D) uint8 levels, or float32 values that are
    not 8-bit; (C, H, W); its PIXELS_ kind). Memory-mapped arrays are read a slice at a time:
    no second full copy besides the result."""
    import numpy as np

    perm, shape = _image_layout(array.shape, where)
    n = array.shape[0]
    if n == 0 or 0 in shape:
        raise DataError(f"data: {where} is empty (shape {tuple(array.shape)}); give it images")
    dtype = array.dtype
    is_float = np.issubdtype(dtype, np.floating)
    if dtype != np.uint8 and not is_float:
        raise DataError(
            f"data: {where} has dtype {dtype}; expected uint8 (levels 0-255) or floats in "
            "[0, 1]; convert it (a.astype(np.uint8) for 0-255 integers, or a / 255.0)"
        )
    dim = shape[0] * shape[1] * shape[2]
    rows = max(1, _CHUNK_BYTES // max(1, dim * dtype.itemsize))

    def chunks() -> Iterator[tuple[int, Any]]:  # (start, (rows, D) numpy array)
        for start in range(0, n, rows):
            c = np.asarray(array[start : start + rows])
            if perm is not None:
                c = c.transpose(perm)
            yield start, c.reshape(len(c), dim)  # (rows, D), channel-major

    if not is_float:
        x = torch.empty((n, dim), dtype=torch.uint8)
        not_binary, top = 0, 0
        for start, c in chunks():
            x.numpy()[start : start + len(c)] = c  # a read-only memory map: copied
            top = max(top, int(c.max())) if c.size else top
            if binary:
                not_binary += int(np.count_nonzero((c != 0) & (c != 255)))
        if not binary and n and top <= 1:
            raise DataError(
                f"data: {where} is uint8 with every value 0 or 1; uint8 is read as levels "
                "0-255, so these would be near-black images (levels 0 and 1/255): store "
                "binary pixels as 0/255 or as floats 0./1. (with data.binary: true), or "
                "multiply 0-1 levels by 255"
            )
        if binary and not_binary:
            ones = "; uint8 is read as levels 0-255, so binary pixels are 0 and 255"
            raise DataError(
                f"data.binary: true, but {where} holds {not_binary} pixels other than 0 and "
                f"255{ones}; store 0/255 (or floats 0./1.), or set data.binary: false"
            )
        return x, shape, PIXELS_BINARY if binary else PIXELS_8BIT
    # Floats: every value in [0, 1], none NaN; 8-bit (k/255) ones are stored as levels.
    lo, hi, nans, not_binary, eight_bit = math.inf, -math.inf, 0, 0, True
    tol = max(1e-4, 256 * float(np.finfo(dtype).eps))
    for _, c in chunks():
        nan = np.isnan(c)
        nans += int(nan.sum())
        c = c[~nan]
        if c.size:
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
            not_binary += int(np.count_nonzero((c != 0) & (c != 1)))
            scaled = c.astype(np.float64) * 255
            eight_bit = eight_bit and bool(np.all(np.abs(scaled - np.round(scaled)) <= tol))
    if nans:
        raise DataError(f"data: {where} holds {nans} NaN values; replace or drop those images")
    if lo < 0 or hi > 1:
        raise DataError(
            f"data: {where} holds floats from {lo:g} to {hi:g}; expected values in [0, 1] "
            "(divide 0-255 levels by 255, or store them as uint8)"
        )
    if binary and not_binary:
        raise DataError(
            f"data.binary: true, but {where} holds {not_binary} values other than 0 and 1; "
            "binarize the images first, or set data.binary: false (grey levels)"
        )
    if binary or eight_bit:  # one uint8 copy: exact levels k/255 (0/1: 0/255)
        x = torch.empty((n, dim), dtype=torch.uint8)
        for start, c in chunks():
            x[start : start + len(c)] = torch.from_numpy(np.rint(c * 255.0).astype(np.uint8))
        return x, shape, PIXELS_BINARY if binary else PIXELS_8BIT
    x = torch.empty((n, dim), dtype=torch.float32)
    for start, c in chunks():
        x[start : start + len(c)] = torch.from_numpy(c.astype(np.float32))
    return x, shape, PIXELS_CONTINUOUS


def _labels(array: Any, where: str, *, n: int) -> torch.Tensor:
    import numpy as np

    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"data: {where} has shape {tuple(array.shape)} and dtype {array.dtype}; expected "
            "one integer class label per image, shape (N,)"
        )
    if len(array) != n:
        raise DataError(
            f"data: {where} holds {len(array)} labels for {n} images; give one label per image"
        )
    return torch.from_numpy(np.asarray(array).astype(np.int64))


def _read_image_folders(cfg: DataConfig) -> Source:
    """data.dataset image_folder: torchvision's ImageFolder, resized once to uint8."""
    assert cfg.train_dir is not None and cfg.test_dir is not None and cfg.image_size
    channels = cfg.channels or 3
    size = (cfg.image_size[0], cfg.image_size[1])
    folders = {"train": cfg.train_dir, "val": cfg.val_dir, "test": cfg.test_dir}
    splits: dict[str, Split] = {}
    classes: dict[str, int] | None = None
    for name, folder in folders.items():
        if folder is None:
            continue
        x, labels, classes = _read_image_folder(Path(folder), name, size, channels, classes)
        if cfg.binary:
            bad = int(((x != 0) & (x != 255)).sum())
            if bad:
                raise DataError(
                    f"data.binary: true, but the images of data.{name}_dir {folder} have {bad} "
                    "pixels other than black and white (resizing interpolates: give "
                    "data.image_size equal to the images' size); or set data.binary: false"
                )
        splits[name] = Split(x, labels)
    pixels = PIXELS_BINARY if cfg.binary else PIXELS_8BIT
    shape = (channels, size[0], size[1])
    return Source(splits["train"], splits["test"], splits.get("val"), shape, pixels)


def _check_image_tree(folder: Path, key: str) -> None:
    """Refuse what would make ImageFolder's walk (it follows links) hang, count an image
    twice or read outside ``folder``: a link to a folder that leads back up (a cycle), out of
    ``folder``, or to a folder already reached; and an image name (in a class folder) that
    is not a regular file, such as a FIFO, which would block the read forever. A link to a
    regular file may point anywhere (git-annex, DVC)."""
    import stat

    from torchvision.datasets.folder import IMG_EXTENSIONS

    top = folder.resolve()
    reached: dict[Path, Path] = {top: folder}
    stack: list[tuple[Path, tuple[Path, ...]]] = [(folder, (top,))]
    while stack:
        here, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{key}: the folder {here} cannot be read ({_reason(exc)})") from None
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows a link
                real = path.resolve()
                if real in ancestors:
                    raise DataError(
                        f"{key}: {path} links back to {real}, a folder it is in (a cycle); "
                        "remove the link"
                    )
                if real != top and top not in real.parents:
                    raise DataError(
                        f"{key}: {path} links to {real}, outside {folder}; move or copy "
                        "those images into the folder"
                    )
                if real in reached:
                    raise DataError(
                        f"{key}: {path} and {reached[real]} are the same folder {real} "
                        "(a link): its images would count twice; remove the link"
                    )
                reached[real] = path
                stack.append((path, (*ancestors, real)))
            elif here != folder and entry.name.lower().endswith(IMG_EXTENSIONS):
                try:
                    mode = os.stat(path).st_mode
                except OSError as exc:
                    raise DataError(
                        f"{key}: cannot read the image {path} ({_reason(exc)})"
                    ) from None
                if not stat.S_ISREG(mode):
                    raise DataError(
                        f"{key}: {path} is not a regular file (only regular files, or links "
                        "to them, are images); remove it"
                    )


def _read_image_folder(
    folder: Path,
    split: str,
    size: tuple[int, int],
    channels: int,
    classes: dict[str, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """((N, C*H*W) uint8, (N,) labels, class name -> label) of one ImageFolder; labels follow
    the training folder's classes (sorted names), so they mean the same in every split."""
    key = f"data.{split}_dir"
    layout = "<folder>/<class>/<image>.png (one subfolder per class, even if only one)"
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is not a folder; expected images as {layout}")
    _check_image_tree(folder, key)
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    steps: list[Any] = [transforms.Resize(size)]
    if channels == 1:
        steps.append(transforms.Grayscale(num_output_channels=1))  # else RGB (the loader's)
    steps.append(transforms.PILToTensor())  # (C, H, W) uint8
    try:
        ds = ImageFolder(str(folder), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"{key}: {folder} holds no images ({_reason(exc)}); expected {layout}"
        ) from None
    if classes is None:
        classes = dict(ds.class_to_idx)
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise DataError(
            f"{key}: {folder} has classes {', '.join(unknown)} that the training folder "
            "has not; name the class subfolders alike in every split"
        )
    dim = channels * size[0] * size[1]
    x = torch.empty((len(ds), dim), dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.long)
    for i, (file, target) in enumerate(ds.samples):
        try:
            image, _ = ds[i]
        except Exception as exc:  # a damaged or unsupported image: name it
            raise DataError(f"{key}: cannot read the image {file} ({_reason(exc)})") from None
        x[i] = image.reshape(dim)
        labels[i] = classes[ds.classes[target]]
    return x, labels, classes


# ---------------------------------------------------------------------------------------
# The evaluation protocol: splits, subsets, binarization and dequantisation.

# The random streams of the data. They depend on nothing a study varies (train.seed,
# data.train_subset, data.val_size, searched keys), so every trial of every study is trained
# on the same static draw and scored on the same validation and test examples.
HOLD_OUT_SEED = 0  # which training examples are held out for validation
TRAIN_POOL_DRAW_SEED = 1  # the one binarization / dequantisation of the training split
TEST_DRAW_SEED = 2  # the one binarization / dequantisation of the test split
VAL_DRAW_SEED = 3  # ... of a validation split the dataset comes with (file datasets)

# How training batches are drawn from the stored training images.
NOISE_NONE = "none"  # as stored (grey levels, binary data, or a static draw)
NOISE_BERNOULLI = "bernoulli"  # x ~ Bernoulli(grey level), fresh each time (dynamic)
NOISE_UNIFORM = "uniform"  # (pixel + u) / 256, u ~ U[0, 1), fresh each time (dequantised)
PIXEL_LEVELS = 256  # 8-bit images: the bins of uniform dequantisation


# What a source's pixel values are: what binarization and dequantisation may do with them.
PIXELS_8BIT = "8-bit"  # levels k/255: may be binarized or dequantised
PIXELS_BINARY = "binary"  # 0/1 already (binarized_mnist, data.binary: true)
PIXELS_CONTINUOUS = "continuous"  # floats in [0, 1] that are not 8-bit: no dequantisation


@dataclass(frozen=True)
class Source:
    """A dataset as read from disk: uint8 levels 0-255, or floats in [0, 1] (0/1 for
    binarized_mnist), one compact copy until ``prepare`` presents it."""

    train: Split  # the whole training split, validation not yet held out
    test: Split
    # The validation split the dataset comes with (binarized_mnist's official one, a file
    # dataset's val); None: validation is held out of train.
    valid: Split | None
    shape: tuple[int, int, int] = IMAGE_SHAPE  # (channels, height, width)
    pixels: str = PIXELS_8BIT


def read_source(data: DataConfig | str, root: str | None = None) -> Source:
    """Read the dataset of ``data`` (a DataConfig, or a dataset name with ``root``, see
    ``resolve_root``) without any presentation."""
    cfg = data if isinstance(data, DataConfig) else None
    dataset = cfg.dataset if cfg is not None else data
    if cfg is not None:
        root = cfg.root
    if dataset in ("npz", "npy", "image_folder"):
        if cfg is None:
            raise DataError(f"dataset {dataset} is read from a DataConfig (data.path ...)")
        if dataset == "image_folder":
            return _read_image_folders(cfg)
        return _read_files(cfg)
    folder = resolve_root(root)
    if dataset == "binarized_mnist":
        train, valid, test = _read_binarized(folder)
        return Source(train, test, valid, IMAGE_SHAPE, PIXELS_BINARY)
    if dataset in _TORCHVISION:
        full, test = _read_torchvision(dataset, folder)
        return Source(full, test, None)
    if dataset == "cifar10":
        full, test = _read_cifar10(folder)
        return Source(full, test, None, CIFAR10_SHAPE)
    raise DataError(
        f"unknown dataset {dataset!r}; expected one of mnist, fashion_mnist, binarized_mnist, "
        "cifar10, npz, npy, image_folder"
    )


def load_datasets(
    cfg: DataConfig, *, dequantize: bool = False, device: torch.device | str = "cpu"
) -> Datasets:
    """Read ``cfg.dataset`` and present its splits as ``cfg`` says, on ``device``.

    dequantize: uniform dequantisation of 8-bit grey levels, for density likelihoods
    (``RunConfig.dequantized``): x = (pixel + u) / 256 with u ~ U[0, 1).
    """
    return prepare(read_source(cfg), cfg, dequantize=dequantize, device=device)


def prepare(
    source: Source, cfg: DataConfig, *, dequantize: bool = False, device: torch.device | str = "cpu"
) -> Datasets:
    """The train, validation and test splits of ``cfg`` from a dataset read once.

    Evaluation data are fixed: the test split is binarized (or dequantised) by one draw of
    its own stream, the training split (from which validation is held out) by one draw of
    another, before any subset is taken. So the test tensors are the same whatever the seed,
    train_subset and val_size, and the validation tensors whatever the seed and
    train_subset. Training data: the static draw, or fresh noise per batch (dynamic
    binarization, dequantisation) through ``Datasets.train_noise``.
    """
    if dequantize and source.pixels == PIXELS_BINARY:
        raise DataError(
            f"model.likelihood: a density (continuous_bernoulli, gaussian) is for 8-bit grey "
            f"levels, but {cfg.dataset}'s pixels are binary; use model.likelihood: bernoulli"
        )
    if dequantize and cfg.binarize != "none":
        raise DataError(
            f"data.binarize: got {cfg.binarize!r} on {cfg.dataset}; "
            "dequantisation is for 8-bit grey levels (data.binarize: none)"
        )
    if dequantize and source.pixels != PIXELS_8BIT:
        raise DataError(
            f"model.likelihood: a density (continuous_bernoulli, gaussian) is trained and "
            f"scored on uniformly dequantised 8-bit pixels, but {cfg.dataset}'s values are "
            "floats in [0, 1] that are not multiples of 1/255; store the images as uint8 "
            "levels 0-255 (or as k/255 floats), or use model.likelihood: bernoulli"
        )
    draw = _dequantize if dequantize else torch.bernoulli
    drawn = dequantize or cfg.binarize != "none"
    if source.valid is not None:  # the dataset's own validation split (binarized_mnist ...)
        if cfg.val_size > len(source.valid):
            raise DataError(
                f"data.val_size: got {cfg.val_size}, but {cfg.dataset}'s "
                f"validation split has {len(source.valid)} examples; set data.val_size to "
                f"at most {len(source.valid)}"
            )
        valid = source.valid
        if drawn and source.pixels != PIXELS_BINARY:  # binary data: a draw changes nothing
            valid = _drawn(valid, draw, VAL_DRAW_SEED)  # whole: the same whatever val_size
            pool = _drawn(source.train, draw, TRAIN_POOL_DRAW_SEED)
            test = _drawn(source.test, draw, TEST_DRAW_SEED)
        else:
            pool, test = source.train, source.test
        val = _index(valid, torch.arange(cfg.val_size))
        stored = source.train
    else:
        train_idx, val_idx = _hold_out_index(len(source.train), cfg.val_size)
        # One draw over the whole training split, before validation is held out or a
        # subset taken: the same pixels for an example whatever val_size and train_subset.
        pool = _drawn(source.train, draw, TRAIN_POOL_DRAW_SEED) if drawn else source.train
        val = _index(pool, val_idx)
        stored, pool = _index(source.train, train_idx), _index(pool, train_idx)
        test = _drawn(source.test, draw, TEST_DRAW_SEED) if drawn else source.test
    noise = NOISE_NONE
    if dequantize:
        train, noise = stored, NOISE_UNIFORM  # grey levels, dequantised afresh per batch
    elif cfg.binarize == "dynamic":
        train, noise = stored, NOISE_BERNOULLI  # grey levels, binarized afresh per batch
    else:
        train = pool  # the static draw, or grey levels as they are
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train):
            raise DataError(
                f"data.train_subset: got {cfg.train_subset}, but {cfg.dataset} "
                f"has only {len(train)} training examples after holding out "
                f"data.val_size={cfg.val_size}"
            )
        train = _index(train, torch.arange(cfg.train_subset))
    return Datasets(
        _present(train, device),
        _present(val, device),
        _present(test, device),
        train_noise=noise,
        shape=source.shape,
    )


def _present(split: Split, device: torch.device | str) -> Split:
    """``split`` on ``device`` as floats in [0, 1]: uint8 levels travel as bytes (a quarter
    of the float32 copy) and become floats there, x = level / 255."""
    labels = None if split.labels is None else split.labels.to(device)
    x = split.x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return Split(x, labels)


def _floats(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(pixel + u) / 256 for x = pixel / 255, u ~ U[0, 1): a density's data in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * (PIXEL_LEVELS - 1)).round_().add_(u).div_(PIXEL_LEVELS)


def _drawn(split: Split, draw: Any, seed: int) -> Split:
    """One draw of ``split`` (floats) by the CPU stream ``seed``: the same on every device."""
    x = _floats(split.x)
    return Split(draw(x, generator=torch.Generator().manual_seed(seed)), split.labels)


def _hold_out_index(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a fixed permutation's tail is held out."""
    if val_size >= n:
        raise DataError(
            f"data.val_size: got {val_size}, but the training split has only "
            f"{n} examples; use a smaller value"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLD_OUT_SEED))
    return perm[: n - val_size].sort().values, perm[n - val_size :].sort().values


def _index(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx], None if split.labels is None else split.labels[idx])


class Batches:
    """Shuffled mini-batches of a split by index permutation, on the split's device.

    ``noise``: ``bernoulli`` makes each batch a fresh Bernoulli draw of its grey levels
    (dynamic binarization, Burda et al. 2015, section 5); ``uniform`` a fresh uniform
    dequantisation. ``generator`` must live on the split's device; its state is what makes a
    resumed run draw the same batches.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        noise: str = NOISE_NONE,
        generator: torch.Generator | None = None,
    ) -> None:
        if noise not in (NOISE_NONE, NOISE_BERNOULLI, NOISE_UNIFORM):
            raise ValueError(f"noise must be none, bernoulli or uniform, got {noise!r}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.noise = noise
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        x = self.split.x
        n = x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, device=x.device, generator=self.generator)
        for start in range(0, n, self.batch_size):
            if self.shuffle:
                batch = x[order[start : start + self.batch_size]]  # (B, 784) gather
            else:
                batch = x[start : start + self.batch_size]
            if self.noise == NOISE_BERNOULLI:
                batch = torch.bernoulli(batch, generator=self.generator)
            elif self.noise == NOISE_UNIFORM:
                batch = _dequantize(batch, self.generator)
            yield batch
