"""The built-in encoders and decoders (``model.arch``: ``mlp`` or ``conv``), sized from
``ModelConfig`` and from the shape (C, H, W) of one example; examples travel flat,
(B, C*H*W). The encoder returns (mu, logvar) of q(z|x); the decoder one value per pixel and
channel (logits or Gaussian means, as ``model.likelihood`` says).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vae_study.config.run import ModelConfig

Shape = tuple[int, int, int]  # (channels, height, width) of one example
DEFAULT_SHAPE: Shape = (1, 28, 28)  # MNIST; what a checkpoint without a shape was trained on

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    """Linear layers of ``widths``, an activation after each one."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        self.body = _mlp([math.prod(shape), *cfg.hidden], cfg.activation)
        self.mu = nn.Linear(cfg.hidden[-1], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[-1], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, H)
        return self.mu(h), self.logvar(h)  # (B, D) each


class MLPDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        widths = [cfg.latent_dim, *reversed(cfg.hidden)]
        self.body = _mlp(widths, cfg.activation)
        self.out = nn.Linear(widths[-1], math.prod(shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))  # (N, C*H*W)


# The conv architecture: 4x4 stride-2 convolutions halve the image (floor(s / 2)) while
# both sides stay at least MIN_CONV_SIDE, at most MAX_CONVS times; channels double from 32.
# On 28x28 that is MNIST's 28 -> 14 -> 7 (two convolutions); on 32x32, 32 -> 16 -> 8 -> 4.
MIN_CONV_SIDE = 4
MAX_CONVS = 5
FIRST_CHANNELS = 32


def conv_sides(shape: Shape) -> list[tuple[int, int]]:
    """(height, width) before each convolution and after the last: [(H, W), ..., (h, w)]."""
    sides = [(shape[1], shape[2])]
    while len(sides) <= MAX_CONVS and min(sides[-1]) // 2 >= MIN_CONV_SIDE:
        h, w = sides[-1]
        sides.append((h // 2, w // 2))
    return sides


def conv_channels(shape: Shape) -> list[int]:
    """Channels before each convolution and after the last: [C, 32, 64, ...]."""
    n = len(conv_sides(shape)) - 1
    return [shape[0]] + [FIRST_CHANNELS * 2**i for i in range(n)]


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (``conv_sides``), then a hidden layer of ``hidden[0]``."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        self.shape = tuple(shape)
        channels, (h, w) = conv_channels(shape), conv_sides(shape)[-1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]  # halves H, W
        layers += [nn.Flatten(), nn.Linear(channels[-1] * h * w, cfg.hidden[0]), act()]
        self.conv = nn.Sequential(*layers)
        self.mu = nn.Linear(cfg.hidden[0], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[0], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x.view(-1, *self.shape))  # (B, C*H*W) -> (B, C, H, W) -> (B, hidden)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """The encoder mirrored: transposed convolutions double the sides back to exactly
    (H, W), with an output padding of 1 where the encoder rounded an odd side down."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        channels, sides = conv_channels(shape), conv_sides(shape)
        self.start = (channels[-1], *sides[-1])  # (c, h, w) of the smallest feature map
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden[0]),
            act(),
            nn.Linear(cfg.hidden[0], math.prod(self.start)),
            act(),
        )
        layers: list[nn.Module] = []
        for i in range(len(sides) - 1, 0, -1):  # from the smallest map back to the image
            (h_out, w_out), (h_in, w_in) = sides[i - 1], sides[i]
            pad = (h_out - 2 * h_in, w_out - 2 * w_in)  # 0 or 1: an odd side
            layers.append(
                nn.ConvTranspose2d(
                    channels[i], channels[i - 1], 4, stride=2, padding=1, output_padding=pad
                )
            )
            if i > 1:
                layers.append(act())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.start)  # (N, c, h, w)
        return self.deconv(h).flatten(1)  # (N, C, H, W) -> (N, C*H*W)
