"""Mini-batches of a split by index permutation on the split's device, and the noise drawn
afresh for each training batch (dynamic binarization, uniform dequantisation), so the hot
loop never touches PIL, a DataLoader or the disk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vae_study.core.splits import Split

# How training batches are drawn from the stored training images.
NOISE_NONE = "none"  # as stored (grey levels, binary data, or a static draw)
NOISE_BERNOULLI = "bernoulli"  # x ~ Bernoulli(grey level), fresh each time (dynamic)
NOISE_UNIFORM = "uniform"  # (pixel + u) / 256, u ~ U[0, 1), fresh each time (dequantised)
PIXEL_LEVELS = 256  # 8-bit images: the bins of uniform dequantisation


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw of the grey levels x: ``torch.bernoulli(x, generator)``.

    On the CPU it is drawn as ``rand < x``: the same draw bit for bit, leaving the generator
    in the same state (torch's CPU Bernoulli draws into a new contiguous tensor, comparing
    one uniform float of the same 24 random bits per value, in x's logical order:
    ``tests/test_data``, with transposed and strided x too), at a quarter of the cost:
    torch's CPU Bernoulli kernel builds a distribution object per value.
    """
    if x.device.type != "cpu":
        return torch.bernoulli(x, generator=generator)
    return torch.rand(x.shape, generator=generator, dtype=x.dtype).lt_(x)


def uniform_dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(pixel + u) / 256 for x = pixel / 255, u ~ U[0, 1): a density's data in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * (PIXEL_LEVELS - 1)).round_().add_(u).div_(PIXEL_LEVELS)


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
                batch = x.index_select(0, order[start : start + self.batch_size])  # (B, 784)
            else:
                batch = x[start : start + self.batch_size]
            if self.noise == NOISE_BERNOULLI:
                batch = dynamic_binarize(batch, self.generator)
            elif self.noise == NOISE_UNIFORM:
                batch = uniform_dequantize(batch, self.generator)
            yield batch
