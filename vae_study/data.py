"""Datasets as tensors on the training device.

``load_datasets`` reads a dataset once (MNIST and Fashion-MNIST through torchvision's own
classes from the original IDX files, binarized MNIST from Larochelle's ``.amat`` files) into
uint8/float tensors; ``Batches`` then serves shuffled mini-batches by index permutation on
the trial's device, so the hot loop never touches PIL, a DataLoader or the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DataConfig
from .errors import DataError

IMAGE_SHAPE = (1, 28, 28)
NUM_PIXELS = 28 * 28

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
    """One split: images flattened to (N, 784) floats in [0, 1]; labels (N,) or None."""

    x: torch.Tensor  # (N, 784) float32
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
    shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width) of one example

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
    """data.root, else $VAE_STUDY_DATA, else the per-user cache's data folder."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("VAE_STUDY_DATA")
    if env:
        return Path(env).expanduser()
    return default_cache_dir() / "data"


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
        x = images.reshape(images.shape[0], NUM_PIXELS).float().div_(255.0)  # (N, 784)
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
    tr, va, te = (Split(read_amat(paths[s]), None) for s in _AMAT_SPLITS)  # type: ignore[arg-type]
    return tr, va, te


# ---------------------------------------------------------------------------------------
# The evaluation protocol: splits, subsets, binarization and dequantisation.

# The random streams of the data. They depend on nothing a study varies (train.seed,
# data.train_subset, data.val_size, searched keys), so every trial of every study is trained
# on the same static draw and scored on the same validation and test examples.
HOLD_OUT_SEED = 0  # which training examples are held out for validation
TRAIN_POOL_DRAW_SEED = 1  # the one binarization / dequantisation of the training split
TEST_DRAW_SEED = 2  # the one binarization / dequantisation of the test split

# How training batches are drawn from the stored training images.
NOISE_NONE = "none"  # as stored (grey levels, binary data, or a static draw)
NOISE_BERNOULLI = "bernoulli"  # x ~ Bernoulli(grey level), fresh each time (dynamic)
NOISE_UNIFORM = "uniform"  # (pixel + u) / 256, u ~ U[0, 1), fresh each time (dequantised)
PIXEL_LEVELS = 256  # 8-bit images: the bins of uniform dequantisation


@dataclass(frozen=True)
class Source:
    """A dataset as read from disk: grey levels in [0, 1] (or 0/1 for binarized_mnist)."""

    train: Split  # the whole training split, validation not yet held out
    test: Split
    valid: Split | None  # binarized_mnist's official validation split; None elsewhere


def read_source(dataset: str, root: str | None) -> Source:
    """Read ``dataset`` from ``root`` (see ``resolve_root``) without any presentation."""
    folder = resolve_root(root)
    if dataset == "binarized_mnist":
        train, valid, test = _read_binarized(folder)
        return Source(train, test, valid)
    if dataset in _TORCHVISION:
        full, test = _read_torchvision(dataset, folder)
        return Source(full, test, None)
    raise DataError(
        f"unknown dataset {dataset!r}; expected one of mnist, fashion_mnist, binarized_mnist"
    )


def load_datasets(
    cfg: DataConfig, *, dequantize: bool = False, device: torch.device | str = "cpu"
) -> Datasets:
    """Read ``cfg.dataset`` and present its splits as ``cfg`` says, on ``device``.

    dequantize: uniform dequantisation of 8-bit grey levels, for density likelihoods
    (``RunConfig.dequantized``): x = (pixel + u) / 256 with u ~ U[0, 1).
    """
    return prepare(read_source(cfg.dataset, cfg.root), cfg, dequantize=dequantize, device=device)


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
    if dequantize and (cfg.binarize != "none" or source.valid is not None):
        raise DataError(
            f"data.binarize: got {cfg.binarize!r} on {cfg.dataset}; "
            "dequantisation is for 8-bit grey levels (data.binarize: none)"
        )
    draw = _dequantize if dequantize else torch.bernoulli
    drawn = dequantize or cfg.binarize != "none"
    if source.valid is not None:  # binarized_mnist: already binary; its own validation split
        if cfg.val_size > len(source.valid):
            raise DataError(
                f"data.val_size: got {cfg.val_size}, but {cfg.dataset}'s "
                f"validation split has {len(source.valid)} examples"
            )
        val = _index(source.valid, torch.arange(cfg.val_size))
        stored, pool, test = source.train, source.train, source.test
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
    return Datasets(train, val, test, train_noise=noise).to(device)


def _dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(pixel + u) / 256 for x = pixel / 255, u ~ U[0, 1): a density's data in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * (PIXEL_LEVELS - 1)).round_().add_(u).div_(PIXEL_LEVELS)


def _drawn(split: Split, draw: Any, seed: int) -> Split:
    return Split(draw(split.x, generator=torch.Generator().manual_seed(seed)), split.labels)


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
