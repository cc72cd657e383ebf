"""Likelihoods against closed forms and numerical integration: a density integrates to 1,
the dequantised Gaussian bounds the probability of 8-bit pixels, the learned std has a floor."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch

from vae_study.config.run import ModelConfig
from vae_study.core.likelihoods import (
    CB_SERIES_BELOW,
    bernoulli_nll,
    bits_per_dim,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    continuous_bernoulli_nll,
    gaussian_nll,
)
from vae_study.core.model import VAE
from vae_study.errors import ConfigError

LOGITS = [-40.0, -8.0, -1.5, -0.3, -1e-3, 0.0, 1e-5, 0.004, 0.02, 0.7, 3.0, 12.0, 60.0]


def _trapezoid(f: torch.Tensor, x: torch.Tensor) -> float:
    return torch.trapezoid(f, x).item()


@pytest.mark.parametrize("logit", LOGITS)
def test_continuous_bernoulli_density_integrates_to_one(logit):
    """int_0^1 CB(x; sigmoid(l)) dx = 1: the log normaliser is right, also near l = 0 where
    its direct form is 0/0 and for large |l| where the density piles up at one end."""
    # Where the density is steep (large |l|) most of its mass is within a few 1/|l| of an
    # end: a grid that is fine there as well as everywhere.
    x = torch.unique(
        torch.cat(
            [
                torch.linspace(0, 1, 200_001, dtype=torch.float64),
                torch.logspace(-12, 0, 20_001, dtype=torch.float64),
                1 - torch.logspace(-12, 0, 20_001, dtype=torch.float64),
            ]
        )
    )
    x = x.clamp(0, 1).unique()
    logits = torch.full((x.shape[0], 1), logit, dtype=torch.float64)  # one pixel per row
    density = torch.exp(-continuous_bernoulli_nll(logits, x[:, None]))
    assert _trapezoid(density, x) == pytest.approx(1.0, abs=2e-5)
    mean = _trapezoid(density * x, x)
    assert continuous_bernoulli_mean(
        torch.tensor(logit, dtype=torch.float64)
    ).item() == pytest.approx(mean, abs=2e-5)


def test_continuous_bernoulli_normaliser_matches_torch_and_its_closed_form():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    lam = torch.sigmoid(logits)
    # C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda), 2 at lambda = 1/2.
    closed = torch.where(
        (lam - 0.5).abs() < 1e-12,
        torch.full_like(lam, 2.0),
        2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam),
    )
    ours = continuous_bernoulli_log_norm(logits)
    far = logits.abs() < 30  # atanh(1 - 2 lambda) loses everything once lambda rounds to 1
    assert torch.allclose(ours[far], closed[far].log(), rtol=0, atol=1e-9)
    # And against torch's own distribution (float64, its Taylor branch near 1/2 included;
    # beyond |l| of about 30 torch clamps the probability and drifts, which the integration
    # test above shows ours does not).
    x = torch.rand(len(LOGITS), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = -torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    ours_nll = continuous_bernoulli_nll(logits[:, None], x[:, None])
    assert torch.allclose(ours_nll[far], ref[far], rtol=1e-6, atol=1e-6)
    # It is the Bernoulli cross-entropy minus a positive log normaliser (C >= 2).
    assert (ours >= math.log(2) - 1e-12).all()
    assert torch.allclose(ours_nll, bernoulli_nll(logits[:, None], x[:, None]) - ours)


def _log_norm_reference(logit: float) -> tuple[float, float]:
    """log C = log(l / tanh(l/2)) = log(l (e^l + 1) / (e^l - 1)) and its derivative
    1/l - 1/sinh(l), from the closed forms at 60 digits (the float logit taken exactly)."""
    with localcontext() as ctx:
        ctx.prec = 60
        a = abs(Decimal(logit))
        e = a.exp()
        value = (a * (e + 1) / (e - 1)).ln()
        slope = 1 / a - 2 / (e - 1 / e)
        return float(value), float(slope if logit > 0 else -slope)


# Inside the series region (|l| < 0.1) and on either side of its edge.
NEAR_ZERO = [1e-4, -1e-3, 0.0099, 1e-2, -0.03, 0.05, 0.0999, -0.1, 0.1001, 0.2, -1.0]


def test_continuous_bernoulli_log_normaliser_near_zero_matches_its_closed_form_to_float64():
    """Within a few ulps of log 2: a wrong series coefficient (-l^4/1440 for -7 l^4/1440 is
    4e-11 off at l = 1e-2, 3e-7 at 0.09) or a series cut short for its region fails."""
    assert CB_SERIES_BELOW == 0.1  # NEAR_ZERO straddles it
    logits = torch.tensor(NEAR_ZERO, dtype=torch.float64)
    ours = continuous_bernoulli_log_norm(logits).tolist()
    for logit, value in zip(NEAR_ZERO, ours, strict=True):
        assert value == pytest.approx(_log_norm_reference(logit)[0], rel=0, abs=1e-15), logit
    assert continuous_bernoulli_log_norm(torch.zeros(1, dtype=torch.float64)).item() == math.log(2)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_continuous_bernoulli_log_normaliser_gradient_near_zero(dtype, rtol):
    """d log C / dl = 1/l - 1/sinh(l), about l/6 near 0: the direct form's gradient is two
    terms near 1/l that cancel, so the series must cover where that loses too much (in float32
    just above |l| = 1e-2 it is 1e-3 to 4e-3 off, 2e-3 at 0.0101)."""
    logits = torch.tensor([*NEAR_ZERO, 0.0101, -0.0101], dtype=dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(continuous_bernoulli_log_norm(logits).sum(), logits)
    want = torch.tensor([_log_norm_reference(x)[1] for x in logits.tolist()], dtype=torch.float64)
    assert torch.allclose(grad.double(), want, rtol=rtol, atol=0)


def test_the_dequantised_gaussian_bounds_the_probability_of_each_pixel_value():
    """One pixel, 256 levels: exp(-(NLL of (v + u)/256) - ln 256), with the NLL averaged over
    u ~ U[0, 1), is a lower bound (Jensen) of the probability the Gaussian puts on pixel v's
    bin; summed over v it is at most the mass on [0, 1], and close to it when the bins are
    narrow against the std. So bits/dim computed this way are honest (an upper bound)."""
    for mean, std in ((0.3, 0.2), (0.9, 0.05), (0.02, 0.01)):
        u = (torch.arange(1024, dtype=torch.float64) + 0.5) / 1024  # midpoint rule, bin
        v = torch.arange(256, dtype=torch.float64)
        y = ((v[:, None] + u[None, :]) / 256).reshape(-1, 1)  # (256*64, 1) pixel values
        nll = (
            gaussian_nll(
                torch.full_like(y, mean),
                y,
                torch.tensor([math.log(std)], dtype=torch.float64),
                floor=1e-6,
            )
            .reshape(256, 1024)
            .mean(1)
        )  # E_u[-log p] per level
        lower = torch.exp(-(nll + math.log(256)))  # per pixel value: a lower bound of P(v)
        normal = torch.distributions.Normal(mean, std)
        edges = torch.arange(257, dtype=torch.float64) / 256
        exact = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])  # P(bin v) under the density
        # (the CDF difference of a far tail bin rounds to 0: an absolute slack of 1e-15)
        assert (lower <= exact * (1 + 1e-9) + 1e-15).all()
        mass = (normal.cdf(torch.tensor(1.0)) - normal.cdf(torch.tensor(0.0))).item()
        assert lower.sum().item() <= mass + 1e-9
        assert lower.sum().item() == pytest.approx(mass, rel=0.03)


def test_bits_per_dim_of_the_uniform_density_is_eight():
    # The uniform density on [0, 1]^D has NLL 0: each 8-bit pixel costs exactly 8 bits.
    assert bits_per_dim(0.0, 784) == pytest.approx(8.0)
    # ... and a model twice as likely per pixel saves one bit per pixel.
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(7.0)


def test_a_learned_std_never_goes_below_its_floor():
    torch.manual_seed(0)
    vae = VAE(
        ModelConfig(
            likelihood="gaussian",
            learn_std=True,
            gaussian_std=0.1,
            std_floor=0.01,
            hidden=(8,),
            latent_dim=2,
        )
    )
    x = torch.full((3, 784), 0.5)
    mean = torch.full((1, 3, 784), 0.5)  # a perfect reconstruction: only log std counts
    with torch.no_grad():
        vae.log_std.fill_(math.log(1e-6))  # far below the floor
    nll = vae.neg_log_likelihood(x, mean)
    floor_nll = 784 * (math.log(0.01) + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(nll, torch.full_like(nll, floor_nll), rtol=1e-5)
    nll.sum().backward()
    assert vae.log_std.grad is not None and (vae.log_std.grad == 0).all()  # held at the floor
    with torch.no_grad():
        vae.log_std.fill_(math.log(0.05))  # above the floor: the std is the learned one
    vae.log_std.grad = None
    nll = vae.neg_log_likelihood(x, mean)
    assert nll[0, 0].item() == pytest.approx(
        784 * (math.log(0.05) + 0.5 * math.log(2 * math.pi)), rel=1e-5
    )
    with pytest.raises(ConfigError, match="model.std_floor"):
        ModelConfig(std_floor=0.5, gaussian_std=0.1).validate()


def test_flushing_denormals_changes_the_bernoulli_terms_by_float32_rounding_at_most():
    """configure_backends flushes denormals on the CPU: a trained decoder's confident pixels
    (logits beyond -87) are where they occur, in exp(-|l|). The per-example -log p and its
    gradient stay what they are without the flush, to float32 rounding."""
    from vae_study.config.run import TrainConfig
    from vae_study.core.device import configure_backends

    g = torch.Generator().manual_seed(0)
    logits = torch.cat(
        [torch.linspace(-120.0, 120.0, 784).expand(6, 784), torch.randn(6, 784, generator=g) * 40]
    )
    x = (torch.rand(12, 784, generator=g) < 0.3).float()
    x[:6] = (logits[:6] > 0).float()  # confident and right: terms down to exp(-120)

    def values_and_grad():
        leaf = logits.clone().requires_grad_()
        nll = bernoulli_nll(leaf, x)
        nll.sum().backward()
        return nll.detach(), leaf.grad

    torch.set_flush_denormal(False)
    try:
        tiny = torch.tensor([1e-40])  # a float32 denormal (made while they are kept)
        assert (tiny * 1.0).item() != 0.0
        kept_nll, kept_grad = values_and_grad()
        configure_backends(TrainConfig(), torch.device("cpu"))
        assert (tiny * 1.0).item() == 0.0  # flushed
        flushed_nll, flushed_grad = values_and_grad()
    finally:
        torch.set_flush_denormal(True)  # the state every fit leaves the process in
    assert torch.equal(flushed_grad, kept_grad)
    torch.testing.assert_close(flushed_nll, kept_nll, rtol=1.2e-7, atol=0.0)
