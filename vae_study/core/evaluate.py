"""Evaluation of a trained model, in nats per example, without gradients.

- ``elbo_terms``: mean rate, distortion and -ELBO over a split (one z per example);
- ``iwae_nll``: -L_K with K importance samples (Burda et al. 2015; K = 5000 is the
  literature's test NLL), batched so that at most ``chunk_size`` decoder rows are alive;
- ``active_units``: latent units with Cov_x(E_q[z_u]) > 0.01 (Burda et al. 2015, sec. 5.2);
- ``elbo_surgery``: the average rate split into I_q(x; z) + KL(q(z) || p(z)) (Hoffman &
  Johnson 2016), with q(z) the aggregate posterior of the examples evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from vae_study import metrics as M
from vae_study import timing
from vae_study.config.run import EvalConfig
from vae_study.core.likelihoods import bits_per_dim
from vae_study.core.model import VAE
from vae_study.core.objectives import (
    gaussian_kl,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    log_weights,
)

ACTIVE_UNIT_THRESHOLD = 0.01
# Decoder rows decoded and scored at a time on the CPU, within a chunk's one draw of z: the
# decoder's outputs (1024 x 784 floats, 3 MB) are scored while still in cache, and glibc
# reuses their memory instead of mapping fresh pages for each chunk's 25 MB. The rows change
# no value beyond float rounding (``tests/test_evaluate``); their speed is in
# ``benchmarks/README.md``.
CPU_DECODE_ROWS = 1024
# Rows of the surgery's (rows, N) float64 log q(z_i | x_m) at a time: 5 MB for N = 10000
# (eval.surgery_examples' default), where 1024 rows (82 MB) are fresh pages each time. The
# rows change no value beyond float rounding (``tests/test_evaluate``).
SURGERY_ROWS = 64


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


@torch.no_grad()
def encode_all(
    model: VAE, x: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, logvar of q(z|x) for every row of x: (N, D) each."""
    parts = [model.encode(xb) for xb in _chunks(x, batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def elbo_terms(
    model: VAE, x: torch.Tensor, *, batch_size: int = 1000, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Mean rate, distortion and -ELBO over x (N, C*H*W), one z per example."""
    total_rate = torch.zeros((), device=x.device, dtype=torch.float64)
    total_dist = torch.zeros((), device=x.device, dtype=torch.float64)
    for xb in _chunks(x, batch_size):
        out, mu, logvar, _ = model(xb, 1, generator)
        total_rate += gaussian_kl(mu, logvar).sum()
        total_dist += -model.log_likelihood(xb, out).sum()
    n = max(x.shape[0], 1)
    r, d = total_rate.item() / n, total_dist.item() / n
    return {"rate": r, "distortion": d, "neg_elbo": r + d}


@torch.no_grad()
def iwae_nll(
    model: VAE,
    x: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 8192,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """-L_K per example, (N,): minus the K-sample importance-weighted bound on log p(x).

    Examples are taken ``max(1, chunk_size // k)`` at a time; when K exceeds ``chunk_size``
    the samples of one example are drawn in chunks and combined by a running logsumexp.
    """
    # One result tensor, filled in place: a small tensor kept per example would be a
    # long-lived allocation between the big, short-lived decoder outputs of the next ones,
    # and glibc's heap then cannot reuse or return their memory (a 10k-example NLL grew by
    # gigabytes that way).
    nll = torch.empty(x.shape[0], device=x.device, dtype=torch.float64)
    examples_at_once = max(1, chunk_size // k)
    samples_at_once = min(k, chunk_size)
    start = 0
    for xb in _chunks(x, examples_at_once):
        mu, logvar = model.encode(xb)  # (B, D)
        acc = torch.full((xb.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
        done = 0
        while done < k:
            s = min(samples_at_once, k - done)
            z = model.reparameterize(mu, logvar, s, generator)  # (S, B, D)
            log_px_z = _log_likelihood(model, xb, z)  # (S, B)
            log_w = log_weights(log_px_z, z, mu, logvar).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
            done += s
        nll[start : start + xb.shape[0]] = math.log(k) - acc
        start += xb.shape[0]
        if progress is not None:
            progress(start, x.shape[0])
    return nll


def _log_likelihood(model: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z_s) (S, B) for z (S, B, D); on the CPU decoded ``CPU_DECODE_ROWS`` rows at a
    time along S. Each decoder row is the same product either way: the pieces change where
    the outputs live, not the draws (z is drawn whole) nor, beyond float rounding, the
    values (``tests/test_evaluate``)."""
    step = max(1, CPU_DECODE_ROWS // max(1, z.shape[1]))
    if z.device.type != "cpu" or step >= z.shape[0]:
        return model.log_likelihood(x, model.decode(z))
    return torch.cat([model.log_likelihood(x, model.decode(zs)) for zs in _chunks(z, step)])


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Units u with Cov_x(E_q[z_u | x]) = Var_x(mu_u(x)) > threshold; mu (N, D)."""
    return int((mu.double().var(0) > threshold).sum().item())


@torch.no_grad()
def elbo_surgery(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    rows: int = SURGERY_ROWS,
) -> tuple[float, float]:
    """(I_q(x; z), KL(q(z) || p(z))) for the N examples whose q(z|x_n) are given.

    One z_n ~ q(z|x_n) per example; q(z) = 1/N sum_m q(z|x_m) is evaluated exactly over the
    same N examples (so the mutual information is at most log N). Their sum is a Monte
    Carlo estimate of the mean rate: E[log q(z|x) - log p(z)].
    mu, logvar: (N, D).
    """
    mu, logvar = mu.double(), logvar.double()
    n = mu.shape[0]
    z = VAE.reparameterize(mu, logvar, 1, None if generator is None else generator)[0]
    inv_var = torch.exp(-logvar)  # (N, D)
    # log q(z_i | x_m) = -0.5 * sum_d [(z_id - mu_md)^2 / var_md + logvar_md + log 2 pi],
    # expanded into matrix products so no (N, N, D) tensor is made.
    const = -0.5 * (
        (mu.pow(2) * inv_var).sum(1) + logvar.sum(1) + mu.shape[1] * math.log(2 * math.pi)
    )  # (N,) per component m
    log_qz = torch.empty(n, dtype=torch.float64, device=mu.device)
    for start in range(0, n, rows):
        zi = z[start : start + rows]  # (R, D)
        pair = -0.5 * zi.pow(2) @ inv_var.T + zi @ (mu * inv_var).T + const  # (R, N)
        log_qz[start : start + rows] = log_mean_exp(pair, 1)
    log_qz_x = log_normal(z, mu, logvar)  # (N,)
    log_pz = log_standard_normal(z)
    mutual_info = (log_qz_x - log_qz).mean().item()
    marginal_kl = (log_qz - log_pz).mean().item()
    return mutual_info, marginal_kl


@torch.no_grad()
def neg_elbo_per_example(
    model: VAE, x: torch.Tensor, *, batch_size: int = 1000, generator: torch.Generator | None = None
) -> torch.Tensor:
    """-ELBO of each row of x, one z per example: (N,)."""
    parts = []
    for xb in _chunks(x, batch_size):
        out, mu, logvar, _ = model(xb, 1, generator)
        parts.append(
            gaussian_kl(mu, logvar).sum(-1).double() - model.log_likelihood(xb, out)[0].double()
        )
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


def _bound_metrics(
    split: str, nll: torch.Tensor, quantity: str, dequantized: bool, dims: int
) -> dict[str, float]:
    """-L_K under its honest name, with bits/dim for dequantised 8-bit data."""
    value = nll.mean().item()
    out = {M.bound_key(split, quantity): value}
    if dequantized:
        out[f"{split}/bpd"] = bits_per_dim(value, dims)
    return out


@torch.no_grad()
def evaluate_val(
    model: VAE,
    x: torch.Tensor,
    cfg: EvalConfig,
    *,
    quantity: str,
    dequantized: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``val/nll`` (or ``val/ce_bound``) with eval.val_k samples on the first
    eval.val_examples validation examples: what a study selects on, computed once."""
    n = min(cfg.val_examples, x.shape[0])
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    with timing.phase("val_nll", examples=n, k=cfg.val_k):
        nll = iwae_nll(model, x[:n], cfg.val_k, chunk_size=cfg.chunk_size, generator=generator)
    model.train(was_training)
    return _bound_metrics("val", nll, quantity, dequantized, x.shape[1])


@torch.no_grad()
def evaluate_test(
    model: VAE,
    x: torch.Tensor,
    cfg: EvalConfig,
    *,
    quantity: str = M.QUANTITY_NLL,
    dequantized: bool = False,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """The ``test/...`` metrics of a trained model on x (N, C*H*W).

    Which examples: rate, distortion, -ELBO, active units and KL per dimension on all N;
    -L_K and the bound gap on the first eval.nll_examples, both terms of the gap on the same
    examples; the ELBO surgery on the first eval.surgery_examples.
    """
    was_training = model.training
    model.eval()
    with timing.phase("test_elbo", examples=x.shape[0]):
        terms = elbo_terms(model, x, generator=generator)
    with timing.phase("test_encode", examples=x.shape[0]):
        mu, logvar = encode_all(model, x)
    nll_x = x if cfg.nll_examples is None else x[: cfg.nll_examples]
    with timing.phase("test_nll", examples=nll_x.shape[0], k=cfg.k):
        nll = iwae_nll(
            model, nll_x, cfg.k, chunk_size=cfg.chunk_size, generator=generator, progress=progress
        )
    with timing.phase("test_bound_gap", examples=nll_x.shape[0]):
        gap = neg_elbo_per_example(model, nll_x, generator=generator) - nll
    m = min(cfg.surgery_examples, x.shape[0])
    with timing.phase("test_surgery", examples=m):
        mutual_info, marginal_kl = elbo_surgery(mu[:m], logvar[:m], generator=generator)
    model.train(was_training)
    return {
        M.TEST_NEG_ELBO: terms["neg_elbo"],
        M.TEST_RATE: terms["rate"],
        M.TEST_DISTORTION: terms["distortion"],
        **_bound_metrics("test", nll, quantity, dequantized, x.shape[1]),
        M.TEST_BOUND_GAP: gap.mean().item(),
        M.TEST_NLL_EXAMPLES: int(nll_x.shape[0]),
        M.TEST_ACTIVE_UNITS: active_units(mu),
        M.TEST_MUTUAL_INFO: mutual_info,
        M.TEST_MARGINAL_KL: marginal_kl,
        M.TEST_KL_PER_DIM: gaussian_kl(mu.double(), logvar.double()).mean(0).tolist(),
    }
