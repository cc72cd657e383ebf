"""A researcher's own images in folders (``data.dataset: image_folder``): torchvision's
``ImageFolder`` layout, ``<folder>/<class>/<image>``, one folder per split, each image resized
once and stored as uint8 levels, flat (N, C*H*W) in channel-major order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vae_study.config.data import DataConfig
from vae_study.core.data_root import error_reason
from vae_study.core.splits import PIXELS_8BIT, PIXELS_BINARY, Source, Split
from vae_study.errors import DataError


def read_image_folders(cfg: DataConfig) -> Source:
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
            raise DataError(
                f"{key}: the folder {here} cannot be read ({error_reason(exc)})"
            ) from None
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
                        f"{key}: cannot read the image {path} ({error_reason(exc)})"
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
            f"{key}: {folder} holds no images ({error_reason(exc)}); expected {layout}"
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
            raise DataError(f"{key}: cannot read the image {file} ({error_reason(exc)})") from None
        x[i] = image.reshape(dim)
        labels[i] = classes[ds.classes[target]]
    return x, labels, classes
