"""Evaluation metrics on models whose answers are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vae_study.config.run import EvalConfig, ModelConfig
from vae_study.core.evaluate import active_units, elbo_surgery, elbo_terms, evaluate_test, iwae_nll
from vae_study.core.model import VAE
from vae_study.core.objectives import rate


class LinearGaussianVAE(VAE):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I): log p(x) and p(z|x) are known exactly.

    With the encoder set to the exact posterior every importance weight equals p(x), so
    every bound is exact; with a perturbed encoder the bounds are strict.
    """

    def __init__(self, latent: int = 2, s: float = 0.5, exact: bool = True) -> None:
        super().__init__(
            ModelConfig(latent_dim=latent, hidden=(8,), likelihood="gaussian", gaussian_std=s)
        )
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(784, latent, generator=g, dtype=torch.float64) * 0.3
        self.b = torch.rand(784, generator=g, dtype=torch.float64)
        self.s2 = s * s
        # Posterior: Sigma = (I + W^T W / s^2)^-1, mean = Sigma W^T (x - b) / s^2.
        self.post_cov = torch.linalg.inv(
            torch.eye(latent, dtype=torch.float64) + self.W.T @ self.W / self.s2
        )
        self.exact = exact
        self.decoder = _Affine(self.W, self.b)

    def encode(self, x):
        mean = (x.double() - self.b) @ self.W @ self.post_cov.T / self.s2
        var = torch.diagonal(self.post_cov).expand_as(mean)
        if not self.exact:
            mean = mean + var.sqrt()  # one posterior std off, twice too wide
            var = var * 2.0
        return mean.float(), var.log().float()

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s2 * torch.eye(784, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)
        return dist.log_prob(x.double())


class _Affine(nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = W.float(), b.float()

    def forward(self, z):
        return z @ self.W.T + self.b


def _lg_data(model: LinearGaussianVAE, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    x = (
        z @ model.W.T
        + model.b
        + math.sqrt(model.s2) * torch.randn(n, 784, generator=g, dtype=torch.float64)
    )
    return x.float()


def test_iwae_nll_is_exact_with_the_true_posterior():
    model = LinearGaussianVAE(exact=True)
    x = _lg_data(model, 20)
    truth = -model.log_marginal(x)
    nll = iwae_nll(model, x, 3, generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(nll, truth, rtol=0, atol=0.1)  # float32 sums of 784 terms


def test_decoding_a_chunk_in_pieces_changes_no_draw_and_no_value_beyond_rounding(monkeypatch):
    """On the CPU iwae_nll decodes a chunk's z in pieces of CPU_DECODE_ROWS rows: the same
    draws of z, the same decoder rows, so -L_K agrees with decoding the chunk whole to float
    rounding, and the generator ends where it did."""
    from vae_study.core import evaluate

    model = VAE(ModelConfig(latent_dim=8, hidden=[64])).eval()
    x = (torch.rand(20, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    results = {}
    for rows in (10**9, 96, 1):  # whole, pieces of a few samples, one sample at a time
        monkeypatch.setattr(evaluate, "CPU_DECODE_ROWS", rows)
        g = torch.Generator().manual_seed(4)
        results[rows] = (iwae_nll(model, x, 300, chunk_size=2400, generator=g), g.get_state())
    whole, whole_state = results[10**9]
    for rows in (96, 1):
        pieces, state = results[rows]
        assert torch.equal(state, whole_state)
        assert torch.allclose(pieces, whole, rtol=1e-6, atol=0)
        assert not torch.equal(pieces, torch.roll(whole, 1))  # not a constant


def test_iwae_nll_tightens_towards_the_true_nll_and_is_chunk_invariant():
    model = LinearGaussianVAE(exact=False)
    x = _lg_data(model, 50)
    truth = -model.log_marginal(x).mean().item()
    nll = {
        k: iwae_nll(model, x, k, generator=torch.Generator().manual_seed(0)).mean().item()
        for k in (1, 10, 1000)
    }
    neg_elbo = elbo_terms(model, x)["neg_elbo"]
    assert nll[1] == pytest.approx(neg_elbo, abs=1.0)
    assert nll[1] > nll[10] > nll[1000] >= truth - 0.05
    assert nll[1000] - truth < 0.1 * (neg_elbo - truth)
    # The same bound whether samples are taken 1000 at a time or in running chunks of 64.
    chunked = (
        iwae_nll(model, x, 1000, chunk_size=64, generator=torch.Generator().manual_seed(1))
        .mean()
        .item()
    )
    assert chunked == pytest.approx(nll[1000], abs=0.05)


def test_active_units_counts_dimensions_whose_mean_moves_with_x():
    g = torch.Generator().manual_seed(0)
    n = 2000
    mu = torch.zeros(n, 6)
    mu[:, 0] = torch.randn(n, generator=g)  # variance 1: active
    mu[:, 1] = 0.5 * torch.randn(n, generator=g)  # variance 0.25: active
    mu[:, 2] = 0.2 * torch.randn(n, generator=g)  # variance 0.04: active
    mu[:, 3] = 0.05 * torch.randn(n, generator=g)  # variance 0.0025: inactive
    mu[:, 4] = 3.0  # constant: inactive
    assert active_units(mu) == 3


def test_active_units_on_a_model_built_with_three_live_dimensions():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=5, hidden=(16,)))
    with torch.no_grad():
        model.encoder.mu.weight.zero_()
        model.encoder.mu.bias.fill_(0.7)
        model.encoder.mu.weight[:3] = torch.randn(3, 16) * 2.0  # dims 0-2 read the input
    x = torch.rand(500, 784, generator=torch.Generator().manual_seed(1))
    mu, _ = model.encode(x)
    assert active_units(mu.detach()) == 3


def test_elbo_surgery_splits_the_rate_and_bounds_the_information():
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 4
    # Two clusters of x, each encoded far from the other: I(x; z) = log 2 exactly (in nats).
    side = (torch.arange(n) % 2).float() * 2 - 1
    mu = torch.zeros(n, d)
    mu[:, 0] = 6.0 * side
    logvar = torch.full((n, d), math.log(0.25))
    mi, mkl = elbo_surgery(mu, logvar, generator=g)
    assert mi == pytest.approx(math.log(2), abs=0.02)
    avg_rate = rate(mu, logvar).mean().item()
    assert mi + mkl == pytest.approx(avg_rate, abs=0.3)  # Monte Carlo: std about 0.07
    assert mkl > 0

    # An encoder that ignores x carries no information: q(z) = q(z|x).
    mi0, mkl0 = elbo_surgery(torch.full((n, d), 0.5), torch.full((n, d), -1.0), generator=g)
    assert mi0 == pytest.approx(0.0, abs=1e-9)
    assert mkl0 == pytest.approx(
        rate(torch.full((1, d), 0.5), torch.full((1, d), -1.0)).item(), abs=0.15
    )


def test_elbo_surgery_is_the_same_whatever_rows_it_takes_at_a_time():
    """The surgery's rows at a time (``SURGERY_ROWS``) change how much of log q(z_i | x_m) is
    alive, not the draw of z nor any value beyond float rounding."""
    g = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(700, 5, generator=g), torch.randn(700, 5, generator=g) - 1
    results = {
        rows: elbo_surgery(mu, logvar, generator=torch.Generator().manual_seed(6), rows=rows)
        for rows in (700, 64, 9, 1)
    }
    assert results[64] == results[700] and results[9] == results[700]
    assert results[1] == pytest.approx(results[700], rel=1e-12)
    assert results[700][0] > 0.5  # the encoder carries information: not a constant


def test_elbo_surgery_of_a_real_encoder_sums_to_its_rate():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=6, hidden=(32,)))
    x = torch.rand(1500, 784, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mu, logvar = model.encode(x)
    mi, mkl = elbo_surgery(mu, logvar, generator=torch.Generator().manual_seed(3))
    avg_rate = rate(mu, logvar).mean().item()
    assert 0 <= mi <= math.log(1500) + 1e-6
    assert mi + mkl == pytest.approx(avg_rate, rel=0.03, abs=0.05)


def test_evaluate_test_reports_every_named_metric_under_its_quantity():
    from vae_study import metrics as M

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=3, hidden=(16,)))
    x = torch.rand(40, 784)
    cfg = EvalConfig(k=20, nll_examples=10, surgery_examples=30)
    out = evaluate_test(model, x, cfg, generator=torch.Generator().manual_seed(0))
    expected = {
        M.TEST_NEG_ELBO,
        M.TEST_RATE,
        M.TEST_DISTORTION,
        M.TEST_NLL,
        M.TEST_BOUND_GAP,
        M.TEST_NLL_EXAMPLES,
        M.TEST_ACTIVE_UNITS,
        M.TEST_MUTUAL_INFO,
        M.TEST_MARGINAL_KL,
        M.TEST_KL_PER_DIM,
    }
    assert set(out) == expected and out[M.TEST_NLL_EXAMPLES] == 10
    assert len(out[M.TEST_KL_PER_DIM]) == 3
    assert sum(out[M.TEST_KL_PER_DIM]) == pytest.approx(out[M.TEST_RATE], rel=1e-4)
    assert out[M.TEST_NEG_ELBO] == pytest.approx(out[M.TEST_RATE] + out[M.TEST_DISTORTION])
    assert out[M.TEST_NLL] <= out[M.TEST_NEG_ELBO] + 1.0
    # A cross-entropy is named so; a density of dequantised pixels also gets bits/dim.
    ce = evaluate_test(
        model, x, cfg, quantity=M.QUANTITY_CROSS_ENTROPY, generator=torch.Generator().manual_seed(0)
    )
    assert M.TEST_CE_BOUND in ce and M.TEST_NLL not in ce and M.TEST_BPD not in ce
    assert ce[M.TEST_CE_BOUND] == out[M.TEST_NLL]  # the same arithmetic, an honest name
    deq = evaluate_test(model, x, cfg, dequantized=True, generator=torch.Generator().manual_seed(0))
    assert deq[M.TEST_BPD] == pytest.approx(
        (deq[M.TEST_NLL] + 784 * math.log(256)) / (784 * math.log(2))
    )


def test_the_bound_gap_compares_the_elbo_and_the_bound_on_the_same_examples():
    """-ELBO - NLL on the NLL's examples: on a subset unlike the rest of the split, the
    difference of the two split-level numbers would be wrong by the subsets' difference."""
    from vae_study import metrics as M

    model = LinearGaussianVAE(exact=False)
    x = _lg_data(model, 60)
    x[:20] += 3.0  # the NLL's examples (the first 20) are far worse than the other 40
    cfg = EvalConfig(k=200, nll_examples=20, surgery_examples=30)
    out = evaluate_test(model, x, cfg, generator=torch.Generator().manual_seed(0))
    sub = x[:20]
    truth_gap = (
        elbo_terms(model, sub, generator=torch.Generator().manual_seed(1))["neg_elbo"]
        - iwae_nll(model, sub, 200, generator=torch.Generator().manual_seed(2)).mean().item()
    )
    assert out[M.TEST_BOUND_GAP] == pytest.approx(truth_gap, abs=1.0)
    assert out[M.TEST_BOUND_GAP] > 0  # the K-sample bound is tighter than the ELBO
    across = out[M.TEST_NEG_ELBO] - out[M.TEST_NLL]  # all 60 against the first 20
    assert abs(across - out[M.TEST_BOUND_GAP]) > 100  # what the report must never show


def test_validation_bound_uses_its_own_samples_and_examples():
    from vae_study import metrics as M
    from vae_study.core.evaluate import evaluate_val

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=3, hidden=(16,)))
    x = torch.rand(50, 784, generator=torch.Generator().manual_seed(1))
    cfg = EvalConfig(val_k=30, val_examples=12)
    out = evaluate_val(
        model, x, cfg, quantity=M.QUANTITY_NLL, generator=torch.Generator().manual_seed(0)
    )
    direct = iwae_nll(model, x[:12], 30, generator=torch.Generator().manual_seed(0))
    assert out == {M.VAL_NLL: pytest.approx(direct.mean().item())}
    assert evaluate_val(model, x, EvalConfig(val_examples=0), quantity=M.QUANTITY_NLL) == {}
