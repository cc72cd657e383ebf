"""The VAE: encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior p(z) = N(0, I).

The vocabulary is the pytorch/examples one (``encode``, ``reparameterize``, ``decode``,
``forward``); unlike it, sizes come from ``ModelConfig`` and from the shape of the images
(``data.shape``: channels, height, width; examples travel flat, (B, C*H*W)), and the
likelihood is a separate, numerically stable ``log_likelihood`` (Bernoulli from logits, or
Gaussian) so that distortion and rate are never summed before the objective decides how to
weigh them.

``model.arch`` is ``mlp``, ``conv`` (stride-2 convolutions as far as the image size allows;
both in ``vae_study.core.architectures``) or a **user model** by import path,
``package.module:ClassName``, imported (``importlib``) only when a model is built
(``vae_study.core.user_model``). Its protocol (``UserModel``):

- built as ``ClassName(cfg, shape, **options)``: ``cfg`` the ``ModelConfig`` (use at least
  ``cfg.latent_dim``), ``shape`` the ``(C, H, W)`` of one example, ``options`` the
  ``model.options`` mapping (scalars and lists; searchable as ``model.options.<name>``);
- an ``nn.Module`` with at least one parameter;
- ``encode(x)`` takes x (B, C*H*W), **flat**, float32 in [0, 1] (reshape it yourself:
  ``x.view(-1, C, H, W)``), and returns ``(mu, logvar)``, each (B, latent_dim);
- ``decode(z)`` takes z (N, latent_dim), **2-D**: the wrapper flattens any leading dims
  (samples K, batch B) into N and restores them, and returns (N, C*H*W): Bernoulli or
  continuous-Bernoulli logits, or Gaussian means, as ``model.likelihood`` says.

The Gaussian likelihood's std (fixed, or learned per value with ``model.learn_std``) belongs
to the ``VAE`` wrapper, not to the user class; so do the reparameterisation, likelihoods,
objectives, metrics and checkpoints. A class that breaks the protocol is refused with a
``ConfigError`` when the ``VAE`` is built, on a probe batch of two examples, before any
training: a missing method, a wrong output shape, a constructor that refuses an option.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from vae_study.config.run import ModelConfig, is_import_path
from vae_study.core.architectures import (
    DEFAULT_SHAPE,
    MIN_CONV_SIDE,
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    Shape,
    conv_sides,
)
from vae_study.core.likelihoods import (
    bernoulli_nll,
    continuous_bernoulli_mean,
    continuous_bernoulli_nll,
    gaussian_nll,
)
from vae_study.core.user_model import build_user_model, probe_user_model
from vae_study.errors import ConfigError


@runtime_checkable
class UserModel(Protocol):
    """What a user model (``model.arch: package.module:ClassName``) provides; built as
    ``ClassName(cfg: ModelConfig, shape: (C, H, W), **model.options)``, an ``nn.Module``."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> mu, logvar of q(z|x), each (B, latent_dim)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) -> likelihood parameters (N, C*H*W): logits or Gaussian means."""
        ...


def check_models(configs: Iterable[ModelConfig], shape: Shape) -> None:
    """Build each user model configuration once for ``shape``: imported, built and probed,
    what a study does before any trial starts (conv: only that the images are large enough;
    mlp needs no check)."""
    seen: list[ModelConfig] = []
    for cfg in configs:
        if cfg.arch == "conv" and len(conv_sides(shape)) < 2:
            VAE(cfg, shape)  # refused: the message says why
        if is_import_path(cfg.arch) and cfg not in seen:
            seen.append(cfg)
            VAE(cfg, shape)


class VAE(nn.Module):
    """A Gaussian-latent VAE over images of ``shape`` (C, H, W), flattened to C*H*W values."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self.shape: Shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.num_values = math.prod(self.shape)
        self.net: nn.Module | None = None  # a user model, which encodes and decodes
        if is_import_path(cfg.arch):
            self.net = build_user_model(cfg, self.shape)
        elif cfg.arch == "conv":
            if len(conv_sides(self.shape)) < 2:
                side = 2 * MIN_CONV_SIDE
                raise ConfigError(
                    f"model.arch: conv on images of {self.shape[1]}x{self.shape[2]}; its "
                    f"stride-2 convolutions need both sides >= {side}: use model.arch: mlp "
                    "(or your own model) for images this small"
                )
            self.encoder: nn.Module = ConvEncoder(cfg, self.shape)
            self.decoder: nn.Module = ConvDecoder(cfg, self.shape)
        else:
            self.encoder = MLPEncoder(cfg, self.shape)
            self.decoder = MLPDecoder(cfg, self.shape)
        if cfg.likelihood == "gaussian":
            log_std = torch.full((self.num_values,), math.log(cfg.gaussian_std))
            if cfg.learn_std:
                self.log_std = nn.Parameter(log_std)  # one learned std per value
            else:
                self.register_buffer("log_std", log_std)
        if self.net is not None:
            probe_user_model(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> mu, logvar of q(z|x), each (B, D)."""
        if self.net is not None:
            return self.net.encode(x)
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z_k = mu + sigma * eps_k, eps_k ~ N(0, I): (B, D) -> (K, B, D)."""
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> decoder output (..., C*H*W): Bernoulli logits or Gaussian means."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)  # (N, D)
        out = self.net.decode(flat) if self.net is not None else self.decoder(flat)
        return out.reshape(*lead, self.num_values)

    def forward(
        self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> (decoder output (K, B, C*H*W), mu, logvar, z (K, B, D))."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, k, generator)
        return self.decode(z), mu, logvar, z

    def neg_log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over values, in nats: x (B, C*H*W), out (..., B, C*H*W) -> (..., B).

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
