"""Where the rate goes (Figure 3 of a study's report): mutual information against marginal
KL, whose sum is the rate, and the KL of each latent dimension of the front's trials."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.figure_style import beta_colour


def rate_split(
    trials: Sequence[Trial],
    front: Sequence[Trial],
    path: Path,
    *,
    front_label: str = "front trials",
) -> Path | None:
    """Figure 3: mutual information against marginal KL; KL per latent dimension of the
    ``front`` trials (``front_label`` says which front)."""
    done = [t for t in trials if t.finished and math.isfinite(t.value(M.TEST_MUTUAL_INFO))]
    if not done:
        return None
    norm, cmap = beta_colour(done)
    fig = Figure(figsize=(14, 5.5))
    (ax1, ax2) = fig.subplots(1, 2)
    mi = np.array([t.value(M.TEST_MUTUAL_INFO) for t in done])
    mkl = np.array([t.value(M.TEST_MARGINAL_KL) for t in done])
    ax1.scatter(
        mi,
        mkl,
        c=[t.beta for t in done],
        cmap=cmap,
        norm=norm,
        s=50,
        edgecolors="black",
        linewidths=0.5,
    )
    top = float(np.nanmax(mi + mkl)) * 1.05 if len(done) else 1.0
    for c in np.linspace(top / 4, top, 4):
        xs = np.linspace(0, c, 20)
        ax1.plot(xs, c - xs, ":", color="grey", lw=0.8)
        ax1.annotate(f"R = {c:.0f}", (c * 0.5, c * 0.5), fontsize=7, color="grey")
    ax1.set_xlabel("mutual information I_q(x; z) [nats]")
    ax1.set_ylabel("marginal KL(q(z) || p(z)) [nats]")
    ax1.set_title("Where the rate goes: R = I(x; z) + KL(q(z) || p(z))")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax1, label="beta")
    ax1.grid(alpha=0.3)
    shown = [t for t in front if t.kl_per_dim][:8]
    if shown:
        for t in sorted(shown, key=lambda t: t.beta):
            kl = sorted(t.kl_per_dim, reverse=True)
            ax2.plot(
                range(1, len(kl) + 1),
                kl,
                marker=".",
                color=cmap(norm(t.beta)),
                label=f"trial {t.trial_id} (beta {t.beta:.3g})",
            )
        ax2.axhline(0.01, color="grey", ls=":", lw=1)
        top = max(max(t.kl_per_dim) for t in shown)
        ax2.set_yscale("symlog", linthresh=0.01)
        ax2.set_ylim(0, top * 2)
        ax2.xaxis.get_major_locator().set_params(integer=True)
        ax2.legend(fontsize=7)
    else:
        ax2.text(
            0.5,
            0.5,
            f"no KL per dimension recorded\nfor the {front_label}",
            ha="center",
            va="center",
            transform=ax2.transAxes,
            color="grey",
        )
    ax2.set_xlabel("latent dimension, sorted by its KL")
    ax2.set_ylabel("KL of the dimension [nats] (symlog)")
    ax2.set_title(f"KL per latent dimension, {front_label} (near 0: collapsed units)", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return figure_files.save_figure(fig, path)
