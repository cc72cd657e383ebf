"""A dataset's splits as tensors: ``Split``, ``Source`` (as read) and ``Datasets`` (as
presented to a run).

Every split is flat, (N, D) with D = C * H * W in channel-major order; the image shape
(C, H, W) travels beside it (``Source.shape``, ``Datasets.shape``). A ``Source`` keeps 8-bit
pixels as uint8 levels until ``vae_study.core.data.prepare`` presents them as floats on the
run's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The MNIST family's images (mnist, fashion_mnist, binarized_mnist); other datasets carry
# their own shape (Source.shape).
IMAGE_SHAPE = (1, 28, 28)

# What a source's pixel values are: what binarization and dequantisation may do with them.
PIXELS_8BIT = "8-bit"  # levels k/255: may be binarized or dequantised
PIXELS_BINARY = "binary"  # 0/1 already (binarized_mnist, data.binary: true)
PIXELS_CONTINUOUS = "continuous"  # floats in [0, 1] that are not 8-bit: no dequantisation


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
    # How each training batch is drawn from the stored train.x (vae_study.core.batches):
    # NOISE_NONE (as stored), NOISE_BERNOULLI (dynamic binarization of grey levels) or
    # NOISE_UNIFORM (dequantisation).
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
