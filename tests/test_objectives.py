"""The objectives against the seed notebook's formula, torch.distributions and the bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vae_study.config.run import ModelConfig
from vae_study.core.likelihoods import BernoulliNLL, bernoulli_nll, torch_bernoulli_nll
from vae_study.core.model import VAE
from vae_study.core.objectives import (
    compute_terms,
    gaussian_kl,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    log_weights,
    rate,
)


def _model(seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    return VAE(
        ModelConfig(latent_dim=kw.pop("latent_dim", 8), hidden=kw.pop("hidden", (64,)), **kw)
    )


def _grey(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def test_k1_beta1_bernoulli_loss_equals_the_seed_notebooks_bce_plus_kld():
    model = _model()
    x = _grey(16)
    g = torch.Generator().manual_seed(3)
    terms = compute_terms(model, x, k=1, beta=1.0, objective="elbo", generator=g)

    # The notebook's VAE.loss_function on the same tensors (same eps via the same seed).
    mu, logvar = model.encode(x)
    eps = torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(3))[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    x_recon = torch.sigmoid(model.decode(z))
    bce = F.binary_cross_entropy(x_recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    assert terms.distortion.sum().item() == pytest.approx(bce.item(), rel=1e-5)
    assert terms.rate.sum().item() == pytest.approx(kld.item(), rel=1e-5)
    assert terms.loss.sum().item() == pytest.approx((bce + kld).item(), rel=1e-5)
    assert torch.allclose(terms.neg_elbo, terms.rate + terms.distortion)


def test_beta_weighs_only_the_rate():
    model = _model()
    x = _grey(8)
    t1 = compute_terms(model, x, beta=1.0, generator=torch.Generator().manual_seed(0))
    t4 = compute_terms(model, x, beta=4.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(t1.rate, t4.rate) and torch.allclose(t1.distortion, t4.distortion)
    assert torch.allclose(t4.loss, t1.distortion + 4.0 * t1.rate)


def test_analytic_rate_matches_torch_distributions():
    mu = torch.randn(5, 7)
    logvar = torch.randn(5, 7)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros(7), torch.ones(7))
    expected = kl_divergence(q, p).sum(-1)
    assert torch.allclose(rate(mu, logvar), expected, atol=1e-5)
    assert torch.all(gaussian_kl(torch.zeros(3), torch.zeros(3)) == 0)


def test_log_densities_match_torch_distributions():
    z = torch.randn(4, 3, 6)
    mu, logvar = torch.randn(3, 6), torch.randn(3, 6)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(log_normal(z, mu, logvar), expected, atol=1e-5)
    assert torch.allclose(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)


def test_gaussian_likelihood_matches_torch_distributions_fixed_and_learned():
    for learn in (False, True):
        model = _model(likelihood="gaussian", gaussian_std=0.3, learn_std=learn)
        x = _grey(4)
        out = torch.rand(2, 4, 784)
        expected = Normal(out, 0.3).log_prob(x).sum(-1)
        assert torch.allclose(model.log_likelihood(x, out), expected, rtol=1e-5)
        assert any(p is model.log_std for p in model.parameters()) == learn


def test_bernoulli_likelihood_is_stable_for_extreme_logits():
    model = _model()
    x = torch.tensor([[1.0] * 392 + [0.0] * 392])
    out = torch.tensor([[200.0] * 392 + [-200.0] * 392])  # sigmoid saturates to exactly 0/1
    ll = model.log_likelihood(x, out)
    assert torch.isfinite(ll).all() and ll.item() == pytest.approx(0.0, abs=1e-3)
    wrong = model.log_likelihood(1 - x, out)
    assert torch.isfinite(wrong).all() and wrong.item() == pytest.approx(-200.0 * 784, rel=1e-3)


@pytest.mark.parametrize("binary", [False, True])
def test_bernoulli_nll_matches_a_float64_reference_to_float32_rounding(binary):
    g = torch.Generator().manual_seed(0)
    # Logits from tiny to huge, where a careless log(1 + exp(-|l|)) loses exp(-|l|) < 6e-8.
    logits = torch.cat(
        [torch.randn(3, 4, 784, generator=g) * s for s in (1e-3, 1, 8, 20, 90)], dim=1
    )
    x = torch.rand(20, 784, generator=g)
    x = torch.bernoulli(x, generator=g) if binary else x
    ref = F.binary_cross_entropy_with_logits(
        logits.double(), x.double().expand_as(logits), reduction="none"
    ).sum(-1)
    for fn in (bernoulli_nll, torch_bernoulli_nll):  # the CPU kernel and the GPU path
        got = fn(logits, x)
        assert got.dtype == torch.float32 and got.shape == (3, 20)
        assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-5)
    # Per value, log1p(exp(-|l|)) to about one float32 ulp where it is far below 1.
    v = torch.linspace(-80.0, 80.0, 100_001)
    right = (v > 0).float()[:, None]  # the pixel the logit predicts: -log p = log1p(exp(-|l|))
    one_pixel = bernoulli_nll(v[:, None], right)
    exact = torch.log1p(torch.exp(-v.double().abs()))
    assert ((one_pixel.double() - exact).abs() / exact).max().item() < 3e-7


def test_bernoulli_nll_in_blocks_is_the_same_as_in_one_piece(monkeypatch):
    import vae_study.core.likelihoods as model_module

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(700, 3, 784, generator=g) * 5  # a K=700 test NLL's decoder output
    x = torch.rand(3, 784, generator=g)
    whole = model_module._bernoulli_nll_block(logits, x)
    own_x = torch.rand(700, 3, 784, generator=g)  # an x per row as well as a broadcast one
    whole_own = model_module._bernoulli_nll_block(logits, own_x)
    monkeypatch.setattr(model_module, "_BLOCK_VALUES", 784 * 3 * 64)  # 11 blocks of 64 rows
    with torch.no_grad():
        assert torch.equal(bernoulli_nll(logits, x), whole)
        assert torch.equal(bernoulli_nll(logits, own_x), whole_own)
    assert torch.equal(BernoulliNLL.apply(logits.requires_grad_(), x), whole)


def test_bernoulli_nll_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    x = torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()  # broadcast over K
    assert torch.autograd.gradcheck(bernoulli_nll, (logits, x))


def test_bfloat16_precision_runs_the_networks_in_bfloat16_and_the_terms_in_float32():
    model = _model()
    x = _grey(32)
    t32 = compute_terms(model, x, k=3, generator=torch.Generator().manual_seed(2))
    t16 = compute_terms(
        model, x, k=3, generator=torch.Generator().manual_seed(2), compute_dtype=torch.bfloat16
    )
    for a, b in ((t32.rate, t16.rate), (t32.distortion, t16.distortion)):
        assert b.dtype == torch.float32
        assert not torch.equal(a, b)  # the matmuls really ran in bfloat16 ...
        assert torch.allclose(a, b, rtol=2e-2)  # ... to bfloat16's 3 significant digits
    t16.loss.mean().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
        for p in model.parameters()
    )


def test_iwae_with_k1_is_the_elbo_and_log_mean_exp_is_stable():
    model = _model()
    x = _grey(32)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    elbo = compute_terms(model, x, k=1, objective="elbo", generator=g1)
    iwae = compute_terms(model, x, k=1, objective="iwae", generator=g2)
    # With K = 1 the IWAE bound is log p(x|z) + log p(z) - log q(z|x): a one-sample ELBO whose
    # KL is Monte Carlo, equal in expectation; compare batch means loosely, terms exactly.
    assert torch.allclose(elbo.distortion, iwae.distortion)
    assert iwae.loss.mean().item() == pytest.approx(elbo.loss.mean().item(), rel=0.05)
    big = torch.tensor([[1000.0], [1000.0]])
    assert log_mean_exp(big, 0).item() == pytest.approx(1000.0)


def test_iwae_bound_exceeds_the_elbo_and_grows_with_k():
    model = _model(latent_dim=4)
    x = _grey(64)
    bounds = {}
    for k in (1, 5, 50, 500):
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            mu, logvar = model.encode(x)
            z = model.reparameterize(mu, logvar, k, g)
            lw = log_weights(model.log_likelihood(x, model.decode(z)), z, mu, logvar)
            bounds[k] = log_mean_exp(lw.double(), 0).mean().item()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, 2000, torch.Generator().manual_seed(1))
        elbo = (model.log_likelihood(x, model.decode(z)).mean(0) - rate(mu, logvar)).mean().item()
    assert bounds[1] == pytest.approx(elbo, abs=2.0)  # L_1 is the ELBO (up to MC noise)
    assert elbo < bounds[5] < bounds[50] < bounds[500]
    assert bounds[500] - elbo > 1.0  # an untrained model: a loose ELBO, a real gap


def test_iwae_objective_trains_through_its_gradient():
    model = _model()
    x = _grey(8)
    terms = compute_terms(
        model, x, k=5, beta=1.0, objective="iwae", generator=torch.Generator().manual_seed(0)
    )
    terms.loss.mean().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert terms.loss.shape == (8,) and math.isfinite(terms.loss.mean().item())
