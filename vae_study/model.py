"""The VAE: encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior p(z) = N(0, I).

The vocabulary is the pytorch/examples one (``encode``, ``reparameterize``, ``decode``,
``forward``); unlike it, sizes come from ``ModelConfig`` and the likelihood is a separate,
numerically stable ``log_likelihood`` (Bernoulli from logits, or Gaussian) so that
distortion and rate are never summed before the objective decides how to weigh them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .data import IMAGE_SHAPE, NUM_PIXELS

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
_LOG_2PI = math.log(2 * math.pi)


class BernoulliNLL(torch.autograd.Function):
    """-log Bernoulli(x; sigmoid(l)) summed over the last axis, from logits l, in nats.

    Per pixel it is softplus(l) - x*l = max(l, 0) - x*l + log1p(exp(-|l|)): stable for any
    logit (exp(-|l|) <= 1 never overflows) and the cross-entropy on grey levels too. Torch's
    own kernels for it (``binary_cross_entropy_with_logits``, ``softplus``, ``log1p``) are
    scalar code on the CPU, about 5 ns a value: a quarter of a training step of the seed model
    and most of the test NLL's time. Here log1p(e) is computed as log(u) - ((u - 1) - e) / u
    with u = 1 + e, vectorised and exact to float rounding (the correction restores what
    rounding 1 + e lost, down to e below machine epsilon, where log(u) = 0 and the result
    is e), and the gradient (sigmoid(l) - x) is formed directly instead of through autograd's
    chain of elementwise ops. ``x`` broadcasts against ``l``: (B, P) with (K, B, P).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        return _bernoulli_nll_values(logits, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits, x = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_logits = (torch.sigmoid(logits) - x) * g if ctx.needs_input_grad[0] else None
        grad_x = (-logits * g).sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


_BLOCK_VALUES = 1 << 18  # values per block of _bernoulli_nll_values: 1 MB temporaries


def _bernoulli_nll_values(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The forward of ``BernoulliNLL``, in blocks along the first axis.

    Blocks keep the four temporaries small enough to stay in cache and to be reused by the
    allocator: on (5000, 1, 784) decoder outputs of a K=5000 test NLL, whole-tensor
    temporaries (16 MB each) fragmented glibc's heap until a 10k-example evaluation held
    tens of GB.
    """
    step = max(1, _BLOCK_VALUES // max(1, logits[0].numel())) if logits.dim() > 1 else 0
    if logits.dim() <= 1 or step >= logits.shape[0]:
        return _bernoulli_nll_block(logits, x)
    out = torch.empty(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    x_follows = x.dim() == logits.dim() and x.shape[0] == logits.shape[0] > 1
    for start in range(0, logits.shape[0], step):
        end = start + step
        out[start:end] = _bernoulli_nll_block(logits[start:end],
                                              x[start:end] if x_follows else x)
    return out


def _bernoulli_nll_block(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # max(l, 0) - x*l first: exactly 0 for a confident right pixel, whose log1p term (down to
    # 1e-38) then survives instead of being rounded away against |l|.
    nll = logits.clamp_min(0.0).addcmul_(logits, x, value=-1.0)
    e = logits.abs().neg_().exp_()
    u = e + 1.0
    correction = (u - 1.0).sub_(e).div_(u)
    return nll.add_(u.log_().sub_(correction)).sum(-1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|logits) of independent Bernoulli pixels, summed over the last axis.

    On the CPU ``BernoulliNLL``; elsewhere torch's fused kernel, which on a GPU is one pass
    where ``BernoulliNLL`` would launch a dozen small kernels. Both are exact to float rounding.
    """
    if logits.device.type == "cpu":
        if torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad):
            return BernoulliNLL.apply(logits, x)
        return _bernoulli_nll_values(logits, x)  # evaluation: no autograd node at all
    return torch_bernoulli_nll(logits, x)


def torch_bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same through ``F.binary_cross_entropy_with_logits`` (the GPU path)."""
    return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                              reduction="none").sum(-1)


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
            nn.Conv2d(1, 32, 4, stride=2, padding=1), act(),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 4, stride=2, padding=1), act(),  # (B, 64, 7, 7)
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, cfg.hidden[0]), act(),
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
            nn.Linear(cfg.latent_dim, cfg.hidden[0]), act(),
            nn.Linear(cfg.hidden[0], 64 * 7 * 7), act(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),  # (N, 32, 14, 14)
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
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, k: int = 1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z_k = mu + sigma * eps_k, eps_k ~ N(0, I): (B, D) -> (K, B, D)."""
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> decoder output (..., 784): Bernoulli logits or Gaussian means."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, self.latent_dim)).view(*lead, NUM_PIXELS)

    def forward(self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 784) -> (decoder output (K, B, 784), mu, logvar, z (K, B, D))."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, k, generator)
        return self.decode(z), mu, logvar, z

    def neg_log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over pixels, in nats: x (B, 784), out (..., B, 784) -> (..., B).

        Bernoulli: the binary cross-entropy computed from logits (stable for any logit); on
        grey levels this is the cross-entropy of pytorch/examples, the 105-nat anchor.
        """
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        log_std = self.log_std
        sq = ((x - out) * torch.exp(-log_std)).pow(2)
        return 0.5 * (sq + 2 * log_std + _LOG_2PI).sum(-1)

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: (..., B)."""
        return -self.neg_log_likelihood(x, out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] (for pictures): sigmoid(logits) or the mean."""
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out.clamp(0.0, 1.0)
