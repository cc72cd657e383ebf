"""A researcher's own images from array files: one ``.npz`` file (``data.dataset: npz``, read
whole) or a folder of ``.npy`` files (``data.dataset: npy``, memory-mapped), checked and
stored as one compact tensor per split: uint8 levels where the values are 8-bit, float32
otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vae_study.config.data import DataConfig
from vae_study.core.data_root import error_reason
from vae_study.core.splits import (
    PIXELS_8BIT,
    PIXELS_BINARY,
    PIXELS_CONTINUOUS,
    Source,
    Split,
)
from vae_study.errors import DataError

_SPLITS = ("train", "val", "test")  # val optional everywhere
_CHANNELS = (1, 3)
_CHUNK_BYTES = 1 << 26  # values checked and converted per slice of a memory-mapped array


def read_array_files(cfg: DataConfig) -> Source:
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
            f"data.path: {path} cannot be read as an .npz file ({error_reason(exc)}); write it "
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
                f"data.path: {where} cannot be read ({error_reason(exc)}); store images as "
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
                f"data.path: {file} cannot be read as an .npy array ({error_reason(exc)}); "
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
