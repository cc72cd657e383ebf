"""The data section of a run: which dataset, where it lives and how it is presented."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from vae_study.config.messages import require
from vae_study.config.schema import PATH, Section, rule

# Datasets a researcher brings: read from data.path (files) or data.*_dir (image folders).
FILE_DATASETS = ("npz", "npy")
OWN_DATASETS = ("npz", "npy", "image_folder")
DATA_PATH_KEYS = ("path", "train_dir", "val_dir", "test_dir")


@dataclass(frozen=True)
class DataConfig(Section):
    """Which dataset, where it lives and how it is presented to the model."""

    SECTION: ClassVar[str] = "data"

    # mnist, fashion_mnist, binarized_mnist, cifar10: read from data.root. A researcher's own
    # images: npz (one .npz file, data.path), npy (a folder of .npy files, data.path) or
    # image_folder (folders of images, one subfolder per class: data.train_dir ...).
    dataset: Literal[
        "mnist", "fashion_mnist", "binarized_mnist", "cifar10", "npz", "npy", "image_folder"
    ] = "mnist"
    # Folder holding the datasets; None: $VAE_STUDY_DATA, else a per-user cache folder.
    root: str | None = rule(None, PATH)
    # none: grey levels in [0, 1]; dynamic: a fresh Bernoulli draw each time an example is
    # used (Burda et al. 2015); static: one draw made with the seed and kept.
    binarize: Literal["none", "dynamic", "static"] = "none"
    # Train on the first N training examples only (quick runs); None: all of them.
    train_subset: int | None = rule(
        None, ge=1, expected="a positive number of examples, or null for all"
    )
    # Validation examples held out of the training split (binarized_mnist, and a file
    # dataset with a val split: taken from that split). 0 disables validation metrics.
    val_size: int = rule(5000, ge=0, expected="a number of examples >= 0 (0 turns validation off)")
    # npz: the .npz file holding arrays train, test, optional val (and train_labels ...);
    # npy: the folder holding train.npy, test.npy, optional val.npy (and train_labels.npy ...).
    # Paths (here and the *_dir keys) relative in a YAML file are relative to that file's
    # folder; given in Python or with --set, to the current directory. Stored absolute.
    path: str | None = None
    # image_folder: torchvision ImageFolder layouts (<dir>/<class>/<image>), val optional.
    train_dir: str | None = None
    val_dir: str | None = None
    test_dir: str | None = None
    # image_folder: every image resized to [H, W] (one int: square); channels 1 (converted
    # to grayscale) or 3 (RGB, the default).
    image_size: tuple[int, ...] | None = None
    channels: int | None = None
    # A file dataset (npz, npy, image_folder) whose pixels are binary, 0/1 (uint8: 0/255):
    # checked against the values when read. A Bernoulli decoder then gives an NLL.
    binary: bool = False

    def validate(self) -> None:
        ds = self.dataset
        files, folders = ds in FILE_DATASETS, ds == "image_folder"
        require(
            (self.path is not None) == files,
            "data.path",
            self.path,
            f"the {'.npz file' if ds == 'npz' else 'folder of .npy files'} (data.dataset: {ds})"
            if files
            else f"no data.path with data.dataset: {ds} (only npz and npy read one; "
            "data.root says where the named datasets are)",
        )
        for key in ("train_dir", "test_dir"):
            require(
                (getattr(self, key) is not None) == folders,
                f"data.{key}",
                getattr(self, key),
                "a folder of images, one subfolder per class (data.dataset: image_folder)"
                if folders
                else f"no data.{key} with data.dataset: {ds} (only image_folder reads folders)",
            )
        require(
            self.val_dir is None or folders,
            "data.val_dir",
            self.val_dir,
            f"no data.val_dir with data.dataset: {ds} (only image_folder reads folders)",
        )
        self._check_images(folders)
        require(
            not self.binary or ds in OWN_DATASETS,
            "data.binary",
            self.binary,
            f"false with data.dataset: {ds}; data.binary declares a file dataset's pixels "
            "binary (use data.binarize, or data.dataset: binarized_mnist)",
        )
        for key in DATA_PATH_KEYS:  # checked here, once the dataset says it takes them
            value = getattr(self, key)
            if value is not None:
                PATH.check(value, f"data.{key}")
                object.__setattr__(self, key, os.path.abspath(os.path.expanduser(value)))

    def _check_images(self, folders: bool) -> None:
        """data.image_size and data.channels: image folders only; [H] becomes [H, H]."""
        ds = self.dataset
        require(
            (self.image_size is not None) == folders,
            "data.image_size",
            None if self.image_size is None else list(self.image_size),
            "[H, W] (or one integer for square images) that every image is resized to"
            if folders
            else f"no data.image_size with data.dataset: {ds} (only image_folder resizes)",
        )
        if self.image_size is not None:
            require(
                len(self.image_size) in (1, 2) and all(1 <= s <= 4096 for s in self.image_size),
                "data.image_size",
                list(self.image_size),
                "[H, W] or one integer, each from 1 to 4096 pixels",
            )
            h, w = self.image_size * 2 if len(self.image_size) == 1 else self.image_size
            object.__setattr__(self, "image_size", (h, w))
        require(
            self.channels is None or (folders and self.channels in (1, 3)),
            "data.channels",
            self.channels,
            "1 (grayscale) or 3 (RGB) with data.dataset: image_folder"
            if folders
            else f"no data.channels with data.dataset: {ds} (only image_folder converts)",
        )


def resolve_data_paths(raw: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """``raw`` with relative ``data.path`` and ``data.*_dir`` made relative to ``folder``
    (the folder of the YAML file that names them), so a study file and its data move
    together and a run reads the same files from any working directory."""
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, Mapping):
        data = dict(data)
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                data[key] = os.path.abspath(os.path.join(folder, value))
        raw["data"] = data
    return raw
