"""Tiny user models for tests/test_own_model.py, named by import path ``user_models:Class``
(tests/ is on sys.path under pytest; a Ray worker gets it through PYTHONPATH)."""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyVAE(nn.Module):
    """The protocol: built as TinyVAE(cfg, shape, **options), flat x in, flat logits out."""

    def __init__(self, cfg, shape, width: int = 8, depth: int = 1) -> None:
        super().__init__()
        n = math.prod(shape)
        self.width, self.depth, self.shape = width, depth, tuple(shape)
        layers: list[nn.Module] = [nn.Linear(n, width), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.mu = nn.Linear(width, cfg.latent_dim)
        self.logvar = nn.Linear(width, cfg.latent_dim)
        self.dec = nn.Sequential(nn.Linear(cfg.latent_dim, width), nn.Tanh(), nn.Linear(width, n))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, width)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)  # (N, C*H*W)


class DropoutVAE(TinyVAE):
    """Random numbers inside encode: torch.func.vmap refuses it, so a pack runs sequentially."""

    def encode(self, x):
        return super().encode(nn.functional.dropout(x, 0.1, self.training))


class NoDecode(nn.Module):
    def __init__(self, cfg, shape) -> None:
        super().__init__()
        self.lin = nn.Linear(math.prod(shape), 2 * cfg.latent_dim)

    def encode(self, x):
        return self.lin(x).chunk(2, dim=-1)


class WrongEncodeShape(TinyVAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return mu[:, :1], logvar[:, :1]  # one latent dimension whatever latent_dim says


class WrongDecodeShape(TinyVAE):
    def decode(self, z):
        return super().decode(z)[:, :-1]  # one value short


class NotAModule:
    def __init__(self, cfg, shape) -> None:
        pass

    def encode(self, x):
        return x, x

    def decode(self, z):
        return z


NOT_A_CLASS = 3
