"""Objectives in nats per example: rate, distortion, the beta-ELBO and the IWAE bound.

With q(z|x) = N(mu, diag sigma^2) and p(z) = N(0, I):
- rate R = KL(q(z|x) || p(z)), analytic (Kingma & Welling 2014, appendix B);
- distortion D = -E_q[log p(x|z)], a K-sample Monte Carlo average;
- -ELBO = R + D; the beta-VAE loss is D + beta * R (Higgins et al. 2017);
- the IWAE bound L_K = E[log 1/K sum_k p(x, z_k) / q(z_k|x)] (Burda et al. 2015, eq. 8),
  L_1 = ELBO <= L_K <= log p(x).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from vae_study.core.likelihoods import LOG_2PI
from vae_study.core.model import VAE


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per dimension: (..., D) -> (..., D)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def rate(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """R = KL(q(z|x) || p(z)) summed over latent dimensions: (B, D) -> (B,)."""
    return gaussian_kl(mu, logvar).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I): (..., D) -> (...)."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)): (..., D) -> (...), broadcasting mu, logvar."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k), stably."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


@dataclass(frozen=True)
class Terms:
    """Per-example terms of one batch, each (B,), in nats."""

    loss: torch.Tensor  # what is minimised: D + beta*R (elbo) or -L_K^beta (iwae)
    rate: torch.Tensor
    distortion: torch.Tensor

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.rate + self.distortion


def log_weights(
    log_px_z: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x)): (K, B).

    beta = 1 gives the importance weights log p(x, z_k) / q(z_k|x) of the IWAE bound. Other
    betas scale the prior-to-posterior log ratio, whose expectation under q is -R, so with
    K = 1 the bound's expectation is the beta-VAE objective -(D + beta * R).
    """
    return log_px_z + beta * (log_standard_normal(z) - log_normal(z, mu, logvar))


def compute_terms(
    model: VAE,
    x: torch.Tensor,
    *,
    k: int = 1,
    beta: float = 1.0,
    objective: Literal["elbo", "iwae"] = "elbo",
    generator: torch.Generator | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Terms:
    """The training loss and its rate and distortion for a batch x (B, C*H*W).

    compute_dtype (``train.precision``): run the encoder and decoder under autocast to this
    dtype (bfloat16 mixed precision); mu, logvar, z and the decoder output are brought back
    to float32, so the rate, the distortion and the loss are always float32 sums.
    """
    with _autocast(x.device, compute_dtype):
        mu, logvar = model.encode(x)  # (B, D) each
    if compute_dtype is not None:
        mu, logvar = mu.float(), logvar.float()
    z = model.reparameterize(mu, logvar, k, generator)  # (K, B, D)
    with _autocast(x.device, compute_dtype):
        out = model.decode(z)  # (K, B, C*H*W)
    if compute_dtype is not None:
        out = out.float()
    r = rate(mu, logvar)  # (B,)
    nll = model.neg_log_likelihood(x, out)  # (K, B): -log p(x|z_k)
    d = nll[0] if k == 1 else nll.mean(0)  # (B,); few ops: this is the hot loop
    if objective == "elbo":
        loss = d + r if beta == 1.0 else d + beta * r
    else:
        loss = -log_mean_exp(log_weights(-nll, z, mu, logvar, beta), 0)
    return Terms(loss=loss, rate=r, distortion=d)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
