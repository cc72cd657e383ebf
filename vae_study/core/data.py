"""A run's datasets: read once (``read_source``) and presented per run (``prepare``).

``read_source`` reads a dataset (the public ones in ``public_datasets``, a researcher's own
in ``array_files`` and ``image_folders``) into one compact ``Source``: 8-bit pixels stay uint8
until ``prepare`` presents the train, validation and test splits as floats on the run's
device, with subsets, the held-out validation split and fixed evaluation draws
(binarization, dequantisation). ``load_datasets`` does both. ``Batches`` (``batches``)
then serves the training split.
"""

from __future__ import annotations

from typing import Any

import torch

from vae_study.config.data import DataConfig
from vae_study.core.array_files import read_array_files
from vae_study.core.batches import (
    NOISE_BERNOULLI,
    NOISE_NONE,
    NOISE_UNIFORM,
    dynamic_binarize,
    uniform_dequantize,
)
from vae_study.core.data_root import resolve_root
from vae_study.core.image_folders import read_image_folders
from vae_study.core.public_datasets import (
    CIFAR10_SHAPE,
    TORCHVISION_CLASSES,
    read_binarized,
    read_cifar10,
    read_torchvision,
)
from vae_study.core.splits import IMAGE_SHAPE, PIXELS_8BIT, PIXELS_BINARY, Datasets, Source, Split
from vae_study.errors import DataError

# The random streams of the data. They depend on nothing a study varies (train.seed,
# data.train_subset, data.val_size, searched keys), so every trial of every study is trained
# on the same static draw and scored on the same validation and test examples.
HOLD_OUT_SEED = 0  # which training examples are held out for validation
TRAIN_POOL_DRAW_SEED = 1  # the one binarization / dequantisation of the training split
TEST_DRAW_SEED = 2  # the one binarization / dequantisation of the test split
VAL_DRAW_SEED = 3  # ... of a validation split the dataset comes with (file datasets)

DRAW_ROWS = 4096  # rows of a split drawn at a time by _drawn (memory, not the draw)


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
            return read_image_folders(cfg)
        return read_array_files(cfg)
    folder = resolve_root(root)
    if dataset == "binarized_mnist":
        train, valid, test = read_binarized(folder)
        return Source(train, test, valid, IMAGE_SHAPE, PIXELS_BINARY)
    if dataset in TORCHVISION_CLASSES:
        full, test = read_torchvision(dataset, folder)
        return Source(full, test, None)
    if dataset == "cifar10":
        full, test = read_cifar10(folder)
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
    draw = uniform_dequantize if dequantize else dynamic_binarize
    drawn = dequantize or cfg.binarize != "none"
    fresh = dequantize or cfg.binarize == "dynamic"  # training noise drawn per batch
    if source.valid is not None:  # the dataset's own validation split (binarized_mnist ...)
        if cfg.val_size > len(source.valid):
            raise DataError(
                f"data.val_size: got {cfg.val_size}, but {cfg.dataset}'s "
                f"validation split has {len(source.valid)} examples; set data.val_size to "
                f"at most {len(source.valid)}"
            )
        stored = source.train
        val_rows = torch.arange(cfg.val_size)
        if drawn and source.pixels != PIXELS_BINARY:  # binary data: a draw changes nothing
            # The first rows of one draw of the whole split: the same whatever val_size.
            val = _drawn(source.valid, draw, VAL_DRAW_SEED, rows=val_rows)
            train = stored if fresh else _drawn(source.train, draw, TRAIN_POOL_DRAW_SEED)
            test = _drawn(source.test, draw, TEST_DRAW_SEED)
        else:
            val, train, test = _index(source.valid, val_rows), stored, source.test
    else:
        train_idx, val_idx = _hold_out_index(len(source.train), cfg.val_size)
        stored = _index(source.train, train_idx)
        # One draw over the whole training split, before validation is held out or a
        # subset taken: the same pixels for an example whatever val_size and train_subset.
        # With fresh training noise only validation keeps that draw's rows.
        if fresh:
            train = stored
            val = _drawn(source.train, draw, TRAIN_POOL_DRAW_SEED, rows=val_idx)
        elif drawn:
            pool = _drawn(source.train, draw, TRAIN_POOL_DRAW_SEED)
            train, val = _index(pool, train_idx), _index(pool, val_idx)
        else:
            train, val = stored, _index(source.train, val_idx)
        test = _drawn(source.test, draw, TEST_DRAW_SEED) if drawn else source.test
    noise = NOISE_UNIFORM if dequantize else NOISE_BERNOULLI if fresh else NOISE_NONE
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


def _drawn(split: Split, draw: Any, seed: int, rows: torch.Tensor | None = None) -> Split:
    """One draw of ``split`` (floats) by the CPU stream ``seed``: the same on every device.

    rows (ascending indices): only these rows of that draw. The split is drawn
    ``DRAW_ROWS`` rows at a time, each value taking the stream's next uniform in order, so
    the pieces are the one draw (``tests/test_data``); the rows kept and one piece are held
    as floats, and the draw stops after the last row kept.
    """
    keep = torch.arange(len(split)) if rows is None else rows
    if len(keep) > 1 and not bool((keep[1:] > keep[:-1]).all()):
        raise ValueError("_drawn: rows must be ascending")
    dtype = torch.float32 if split.x.dtype == torch.uint8 else split.x.dtype
    out = torch.empty((len(keep), *split.x.shape[1:]), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    done = 0
    for start in range(0, int(keep[-1]) + 1 if len(keep) else 0, DRAW_ROWS):
        piece = draw(_floats(split.x[start : start + DRAW_ROWS]), generator=g)
        mine = keep[done:][keep[done:] < start + DRAW_ROWS]
        out[done : done + len(mine)] = piece[mine - start]
        done += len(mine)
    return Split(out, None if split.labels is None else split.labels[keep])


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
