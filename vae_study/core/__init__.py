"""The training core: one run, torch only. Data, the VAE and its likelihoods, the
objectives, evaluation, the trainer (``fit``) and packs of members trained as one batched
model (``fit_pack``), checkpoints and devices. It knows nothing of studies, Ray or Optuna."""

from __future__ import annotations

from vae_study.core.data import load_datasets, read_source
from vae_study.core.fused import fit_pack
from vae_study.core.likelihoods import (
    bernoulli_nll,
    bits_per_dim,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_nll,
    gaussian_nll,
)
from vae_study.core.model import VAE, UserModel
from vae_study.core.objectives import Terms, compute_terms
from vae_study.core.splits import Datasets
from vae_study.core.train import FitResult, fit

__all__ = [
    "VAE",
    "Datasets",
    "FitResult",
    "Terms",
    "UserModel",
    "bernoulli_nll",
    "bits_per_dim",
    "compute_terms",
    "continuous_bernoulli_log_norm",
    "continuous_bernoulli_nll",
    "fit",
    "fit_pack",
    "gaussian_nll",
    "load_datasets",
    "read_source",
]
