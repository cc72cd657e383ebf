"""Packing: which configurations of a search share one Ray trial, trained fused as one
batched model (``vae_study.core.fused.fit_pack``). Members of a pack may differ only in the
member keys; a study whose trials cannot hold several configurations (ASHA, grid, no member
key searched) is told why, and ``resources.configs_per_trial: auto`` is resolved here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vae_study.errors import ConfigError

if TYPE_CHECKING:  # types only: config.study checks a study file's packs with this module
    from vae_study.config.study import StudyConfig

# The keys fused members of one Ray trial may differ in (vae_study.core.fused.MEMBER_KEYS, here
# without importing torch); the searcher holds every other searched key equal in a pack.
MEMBER_KEYS = ("train.beta", "train.seed", "train.lr", "model.gaussian_std")
MEMBER_PREFIXES = ("eval.",)
GPU_PACK_MEMBERS = 32  # members a GPU trial aims at with configs_per_trial: auto


def pack_refusal(study: StudyConfig) -> str | None:
    """Why this study's trials cannot train several configurations fused (None: they can)."""
    if study.scheduler.type == "asha":
        return (
            "ASHA stops whole Ray trials, and must decide per configuration (on its "
            "replicate mean): with one configuration per trial it does"
        )
    if study.search.algorithm == "grid":
        return "the grid sampler asks for whole grid points, which a pack cannot hold fixed"
    if not any(is_member_key(p.key) for p in study.search.space):
        return (
            "packed configurations share every searched key but "
            + ", ".join(MEMBER_KEYS)
            + " and eval.*, and this search varies none of those: they would be copies"
        )
    return None


def is_member_key(key: str) -> bool:
    """Whether fused members of one trial may differ in ``key`` (beta, lr, seed, ...)."""
    return key in MEMBER_KEYS or key.startswith(MEMBER_PREFIXES)


def _only_mlp(study: StudyConfig) -> bool:
    """Whether every trial is an MLP (the stacked path, the one benchmarked on a GPU)."""
    archs = {study.base.model.arch}
    for p in study.search.space:
        if p.key == "model.arch":
            archs |= set(p.values) if p.kind == "choice" else set()
    return archs == {"mlp"}


def check_packs(study: StudyConfig) -> None:
    """resources.configs_per_trial and search.replicates against what fused members can do."""
    n = study.resources.configs_per_trial
    if n == "auto" or n == 1:
        return
    why = pack_refusal(study)
    if why is not None:
        raise ConfigError(
            f"resources.configs_per_trial: got {n}, but {why}; use configs_per_trial: 1"
        )


def configs_per_trial(study: StudyConfig, *, gpu: bool) -> int:
    """``resources.configs_per_trial`` resolved for trials with (``gpu``) or without a GPU
    share, at most ``search.num_trials``."""
    n = study.resources.configs_per_trial
    if n == "auto":
        n = 1
        if gpu and _only_mlp(study) and pack_refusal(study) is None:
            n = max(1, GPU_PACK_MEMBERS // study.search.replicates)
    return min(n, study.search.num_trials)
