"""Likelihoods p(x|z) of the decoder's output, as -log p summed over pixels, in nats.

- ``bernoulli_nll``: independent Bernoulli pixels from logits. A likelihood of binary data;
  on grey levels in (0, 1) it is the cross-entropy of the pytorch/examples VAE, which
  normalises nothing (``metrics.QUANTITY_CROSS_ENTROPY``).
- ``continuous_bernoulli_nll``: the continuous Bernoulli density on [0, 1] (Loaiza-Ganem &
  Cunningham 2019), the Bernoulli cross-entropy plus its log normaliser.
- ``gaussian_nll``: a Gaussian density per pixel with a floor on its standard deviation.
The densities are scored on uniformly dequantised 8-bit pixels (``data.prepare``), so
-log p of the data in [0, 1] plus D log 256 bounds the discrete NLL of the 8-bit images
(Theis et al. 2016); ``bits_per_dim`` turns it into the literature's unit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)
_LOG_2 = math.log(2.0)
# |l| below which continuous_bernoulli_log_norm takes its series (through l^8). Measured
# against a 60-digit reference over |l| in [1e-4, 1]: in float64 the value stays within
# 3.3e-16 and the gradient within 1.1e-12 (relative); in float32 the gradient just above it,
# where 1/l - 1/sinh(l) cancels, within 6e-5 (a switch at 1e-2 would leave 3.7e-3).
CB_SERIES_BELOW = 0.1


class BernoulliNLL(torch.autograd.Function):
    """-log Bernoulli(x; sigmoid(l)) summed over the last axis, from logits l, in nats.

    Per pixel it is softplus(l) - x*l = max(l, 0) - x*l + log1p(exp(-|l|)): stable for any
    logit (exp(-|l|) <= 1 never overflows), exact to float rounding down to exp(-|l|) below
    machine epsilon (log1p keeps it where log(1 + e) would round it to 0), and the
    cross-entropy on grey levels too. It is a few in-place vectorised passes (torch's
    ``binary_cross_entropy_with_logits`` and ``softplus`` cost about twice as much on the
    CPU), and the gradient (sigmoid(l) - x) is formed directly instead of through autograd's
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
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(g) if ctx.needs_input_grad[0] else None
        grad_x = (-logits * g).sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


# Values per block of _bernoulli_nll_values: its two temporaries are 256 kB each in float32.
_BLOCK_VALUES = 1 << 16


def _bernoulli_nll_values(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The forward of ``BernoulliNLL``, in blocks along the first axis.

    Blocks keep the two temporaries small enough to stay in cache and to be reused by the
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
        out[start:end] = _bernoulli_nll_block(logits[start:end], x[start:end] if x_follows else x)
    return out


def _bernoulli_nll_block(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # max(l, 0) - x*l first: exactly 0 for a confident right pixel, whose log1p term (down to
    # 1e-38) then survives instead of being rounded away against |l|.
    nll = logits.clamp_min(0.0).addcmul_(logits, x, value=-1.0)
    return nll.add_(logits.abs().neg_().exp_().log1p_()).sum(-1)


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
    return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda), lambda = sigmoid(l), elementwise (Loaiza-Ganem & Cunningham 2019, eq. 7).

    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda); with 1 - 2 sigmoid(l) = -tanh(l/2)
    and atanh(-tanh(l/2)) = -l/2 this is l / tanh(l/2), an even function: log|l| -
    log tanh(|l|/2). For |l| < ``CB_SERIES_BELOW`` its Taylor series instead (with t = l/2,
    log 2 + log cosh t - log(sinh t / t)):

        log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720 - 127 l^8/4838400,

    whose first omitted term, 73 l^10/34214400, is at most 2.2e-16 there. The direct form is
    0/0 at l = 0, and its gradient 1/l - 1/sinh(l) cancels near it.
    """
    a = logits.abs()
    small = a < CB_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(a), a)
    direct = safe.log() - torch.tanh(0.5 * safe).log()
    sq = logits * logits
    series = _LOG_2 + sq * (1 / 12 + sq * (-7 / 1440 + sq * (31 / 90720 + sq * (-127 / 4838400))))
    return torch.where(small, series, direct)


def continuous_bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log CB(x; sigmoid(l)) summed over the last axis: the cross-entropy minus log C."""
    return bernoulli_nll(logits, x) - continuous_bernoulli_log_norm(logits).sum(-1)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] under CB(sigmoid(l)): lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)),
    i.e. sigmoid(l) / tanh(l/2) - 1/l; 1/2 + l/12 near l = 0."""
    small = logits.abs() < 1e-2
    safe = torch.where(small, torch.ones_like(logits), logits)
    direct = torch.sigmoid(safe) / torch.tanh(0.5 * safe) - 1.0 / safe
    return torch.where(small, 0.5 + logits / 12.0, direct)


def gaussian_nll(
    mean: torch.Tensor, x: torch.Tensor, log_std: torch.Tensor, *, floor: float
) -> torch.Tensor:
    """-log N(x; mean, std^2) summed over the last axis, std = max(exp(log_std), floor).

    The floor keeps a learned std from collapsing where a pixel barely varies (MNIST's
    border, always 0): on dequantised data the density there is bounded anyway, but a std
    far below the dequantisation noise only makes the optimisation stiff.
    """
    log_std = log_std.clamp_min(math.log(floor))
    sq = ((x - mean) * torch.exp(-log_std)).pow(2)
    return 0.5 * (sq + 2 * log_std + LOG_2PI).sum(-1)


def bits_per_dim(nll: float, dims: int, levels: int = 256) -> float:
    """Bits per dimension of 8-bit data from the NLL (nats) of its dequantised version
    rescaled to [0, 1]: (NLL + D ln levels) / (D ln 2)."""
    return (nll + dims * math.log(levels)) / (dims * _LOG_2)
