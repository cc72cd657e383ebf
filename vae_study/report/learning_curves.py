"""The learning curves of a study (Figure 4 of its report): validation -ELBO, rate and
distortion per epoch of every trial, coloured by beta; stopped and failed trials distinct."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.records.layout import COMPLETED, FAILED, PENDING, RUNNING, STOPPED
from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.figure_style import beta_colour


def learning_curves(trials: Sequence[Trial], path: Path) -> Path | None:
    """Figure 4: validation -ELBO, rate, distortion per epoch; stopped and failed distinct."""
    with_history = [t for t in trials if t.history]
    if not with_history:
        return None
    norm, cmap = beta_colour(with_history)
    fig = Figure(figsize=(16, 5))
    axes = fig.subplots(1, 3)
    keys = (
        (M.VAL_NEG_ELBO, "validation -ELBO"),
        (M.VAL_RATE, "validation rate R"),
        (M.VAL_DISTORTION, "validation distortion D"),
    )
    styles = {COMPLETED: "-", STOPPED: "--", RUNNING: "-.", PENDING: "-."}
    for ax, (key, label) in zip(axes, keys, strict=True):
        for t in with_history:
            ep = [h[M.EPOCH] for h in t.history]
            ys = [h.get(key) for h in t.history]
            ax.plot(ep, ys, styles.get(t.status, ":"), color=cmap(norm(t.beta)), lw=1, alpha=0.85)
            if t.status == FAILED:
                ax.plot(ep[-1:], ys[-1:], "x", color="red", ms=9, mew=2)
            elif t.status == STOPPED:
                ax.plot(ep[-1:], ys[-1:], "|", color="black", ms=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} [nats]")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="-", color="k", label=COMPLETED),
        Line2D([], [], ls="--", color="k", marker="|", label="stopped (scheduler)"),
        Line2D([], [], ls="-.", color="k", label=RUNNING),
        Line2D([], [], ls=":", color="red", marker="x", label="failed or diverged"),
    ]
    axes[2].legend(handles=handles, fontsize=8)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="beta")
    fig.suptitle("Learning curves, coloured by beta")
    return figure_files.save_figure(fig, path)
