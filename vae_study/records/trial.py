"""A trial as the report sees it: one member's row of results.csv, or a configuration with
the means and standard errors over its members (``configurations``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.records.layout import COMPLETED
from vae_study.records.results import parse_kl_per_dim


@dataclass
class Trial:
    """One trial as the report sees it."""

    trial_id: str
    status: str
    params: dict[str, Any]  # every run key that matters, searched or not
    metrics: dict[str, Any]  # the results.csv row
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch
    checkpoint: Path | None = None
    pareto: bool = False
    # A configuration (``StudyFolder.configs``): ``metrics`` holds the means over its
    # completed replicates, ``se`` their standard errors (None with fewer than 2), ``n_seeds``
    # how many replicates finished of ``n_replicates``, ``members`` the replicates' rows.
    # A results.csv row (a member) keeps the defaults: one seed, no standard error.
    se: dict[str, float | None] = field(default_factory=dict)
    n_seeds: int = 1
    n_replicates: int = 1
    members: list[Trial] = field(default_factory=list)

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return math.nan
        return v

    def error(self, key: str) -> float | None:
        """The standard error of ``key`` over the replicates; None when there is none (one
        replicate, or a results.csv row), never 0 in its place."""
        v = self.se.get(key)
        try:
            v = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None

    @property
    def finished(self) -> bool:
        return self.status == COMPLETED

    @property
    def beta(self) -> float:
        return float(self.params["train.beta"])

    @property
    def latent_dim(self) -> int:
        return int(self.params["model.latent_dim"])

    @property
    def k(self) -> int:
        return int(self.params["train.k"])

    @property
    def objective(self) -> str:
        return str(self.params["train.objective"])

    @property
    def kl_per_dim(self) -> list[float]:
        return parse_kl_per_dim(self.metrics.get(M.TEST_KL_PER_DIM))
