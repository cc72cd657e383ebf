"""A researcher's own VAE for vae_study: a small convolutional encoder and decoder.

vae_study builds it from the study file's ``model.arch: examples.shapes.shapes_vae:ShapesVAE``
as ``ShapesVAE(cfg, shape, **model.options)`` and wraps it in its own ``VAE`` (the
likelihood, the learned Gaussian std, the objectives, metrics and checkpoints). The protocol
(``vae_study.core.model.UserModel``): ``encode(x)`` takes flat rows (B, C*H*W) and returns
``(mu, logvar)``, each (B, latent_dim); ``decode(z)`` takes (N, latent_dim) and returns flat
likelihood parameters (N, C*H*W) (here Gaussian means).
"""

from __future__ import annotations

import torch
from torch import nn

from vae_study.config.run import ModelConfig


class ShapesVAE(nn.Module):
    """Two stride-2 convolutions of ``width`` and 2 * ``width`` channels (H and W must be
    multiples of 4), a hidden layer of ``hidden`` units; the decoder mirrors it."""

    def __init__(
        self, cfg: ModelConfig, shape: tuple[int, int, int], width: int = 32, hidden: int = 256
    ) -> None:
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"ShapesVAE needs H and W that are multiples of 4, got {h}x{w}")
        self.shape = shape
        self.feature = (2 * width, h // 4, w // 4)  # (channels, H/4, W/4) at the bottom
        flat = 2 * width * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1),  # (B, width, H/2, W/2)
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # (B, 2 width, H/4, W/4)
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.SiLU(),
        )
        self.mu = nn.Linear(hidden, cfg.latent_dim)
        self.logvar = nn.Linear(hidden, cfg.latent_dim)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, flat), nn.SiLU()
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # (N, width, H/2, W/2)
            nn.SiLU(),
            nn.ConvTranspose2d(width, c, 4, stride=2, padding=1),  # (N, C, H, W)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.view(-1, *self.shape))  # (B, C*H*W) -> (B, C, H, W) -> (B, hidden)
        return self.mu(h), self.logvar(h)  # (B, latent_dim) each

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.feature)  # (N, 2 width, H/4, W/4)
        return self.decoder(h).flatten(1)  # (N, C*H*W): the Gaussian means
