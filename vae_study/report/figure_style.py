"""What the report's figures share in how they look: the markers of groups of points and the
colour scale of beta (logarithmic when the study's betas span more than a point)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.colors import LogNorm, Normalize

from vae_study.records.trial import Trial

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def beta_colour(trials: Sequence[Trial]) -> tuple[Any, Any]:
    """(norm, colour map) that colour ``trials`` by their beta: viridis on a log scale over
    their betas, or a linear one around a single beta."""
    betas = [t.beta for t in trials if t.beta > 0]
    lo, hi = (min(betas), max(betas)) if betas else (1.0, 1.0)
    if hi / lo > 1.0001:
        norm: Any = LogNorm(vmin=lo, vmax=hi)
    else:
        norm = Normalize(vmin=lo * 0.5, vmax=hi * 1.5)
    return norm, matplotlib.colormaps["viridis"]
