"""The VAE: encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior p(z) = N(0, I).

The vocabulary is the pytorch/examples one (``encode``, ``reparameterize``, ``decode``,
``forward``); unlike it, sizes come from ``ModelConfig`` and the likelihood is a separate,
numerically stable ``log_likelihood`` (Bernoulli from logits, or Gaussian) so that
distortion and rate are never summed before the objective decides how to weigh them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .data import IMAGE_SHAPE, NUM_PIXELS
from .likelihoods import (
    bernoulli_nll,
    continuous_bernoulli_mean,
    continuous_bernoulli_nll,
    gaussian_nll,
)

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
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.body = _mlp([NUM_PIXELS, *cfg.hidden], cfg.activation)
        self.mu = nn.Linear(cfg.hidden[-1], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[-1], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, H)
        return self.mu(h), self.logvar(h)  # (B, D) each


class MLPDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = [cfg.latent_dim, *reversed(cfg.hidden)]
        self.body = _mlp(widths, cfg.activation)
        self.out = nn.Linear(widths[-1], NUM_PIXELS)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))  # (N, 784)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7), then a hidden layer of ``hidden[0]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),
            act(),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            act(),  # (B, 64, 7, 7)
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, cfg.hidden[0]),
            act(),
        )
        self.mu = nn.Linear(cfg.hidden[0], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[0], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x.view(-1, *IMAGE_SHAPE))  # (B, 784) -> (B, 1, 28, 28) -> (B, H)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden[0]),
            act(),
            nn.Linear(cfg.hidden[0], 64 * 7 * 7),
            act(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            act(),  # (N, 32, 14, 14)
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, 64, 7, 7)
        return self.deconv(h).flatten(1)  # (N, 784)


class VAE(nn.Module):
    """A Gaussian-latent VAE over 28x28 images flattened to 784 values."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        if cfg.arch == "conv":
            self.encoder: nn.Module = ConvEncoder(cfg)
            self.decoder: nn.Module = ConvDecoder(cfg)
        else:
            self.encoder = MLPEncoder(cfg)
            self.decoder = MLPDecoder(cfg)
        if cfg.likelihood == "gaussian":
            log_std = torch.full((NUM_PIXELS,), math.log(cfg.gaussian_std))
            if cfg.learn_std:
                self.log_std = nn.Parameter(log_std)  # one learned std per pixel
            else:
                self.register_buffer("log_std", log_std)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 784) -> mu, logvar of q(z|x), each (B, D)."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z_k = mu + sigma * eps_k, eps_k ~ N(0, I): (B, D) -> (K, B, D)."""
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> decoder output (..., 784): Bernoulli logits or Gaussian means."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, self.latent_dim)).view(*lead, NUM_PIXELS)

    def forward(
        self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 784) -> (decoder output (K, B, 784), mu, logvar, z (K, B, D))."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, k, generator)
        return self.decode(z), mu, logvar, z

    def neg_log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels, in nats: x (B, 784), out (..., B, 784) -> (..., B).

        Bernoulli: the binary cross-entropy computed from logits (stable for any logit); on
        grey levels this is the cross-entropy of pytorch/examples, the 105-nat anchor, and
        not a likelihood. Continuous Bernoulli and Gaussian: densities of dequantised pixels.
        """
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        if self.cfg.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_nll(out, x)
        return gaussian_nll(out, x, self.log_std, floor=self.cfg.std_floor)

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: (..., B)."""
        return -self.neg_log_likelihood(x, out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] (for pictures): sigmoid(logits) or the mean."""
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.cfg.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_mean(out)
        return out.clamp(0.0, 1.0)
