"""The knob plots of a study (Figure 2 of its report): each searched knob (beta, K, latent
size) against two test metrics, drawn from ``knobs.knob_panels``."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.config.space import Param
from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.figure_style import MARKERS
from vae_study.report.knob_matching import knob_name, matching_text
from vae_study.report.knobs import knob_panels


def knobs(
    trials: Sequence[Trial], path: Path, *, searched: Sequence[Param], quantity: str
) -> Path | None:
    """Figure 2: each searched knob (beta, K, latent size) against two test metrics, one line
    per cell (matched setting of the other searched knobs, ``knobs``), each point's bar the
    standard error of its paired difference from its line's first point, and under each
    panel how it matched and what its bars are; no figure when none is varied or finished."""
    panels = knob_panels(trials, searched, quantity)
    if not panels or not any(t.finished for t in trials):
        return None
    cols = len(panels) // 2
    fig = Figure(figsize=(5.5 * cols + 1, 9))
    axes = fig.subplots(2, cols, squeeze=False)
    for j, panel in enumerate(panels):
        ax = axes[j % 2, j // 2]
        if panel.message is not None:
            ax.text(
                0.5,
                0.5,
                panel.message,
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
                wrap=True,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        for i, s in enumerate(panel.series):
            xs = [pt.x for pt in s.points]
            (line,) = ax.plot(
                xs, [pt.mean for pt in s.points], marker=MARKERS[i % len(MARKERS)], label=s.label
            )
            # A bar: the standard error of the point minus the line's first point, paired
            # by seed; none at the reference, none without two paired seeds (never a 0).
            barred = [pt for pt in s.points if pt.contrast is not None]
            if barred:
                ax.errorbar(
                    [pt.x for pt in barred],
                    [pt.mean for pt in barred],
                    yerr=[pt.contrast.se for pt in barred],
                    fmt="none",
                    ecolor=line.get_color(),
                    capsize=3,
                )
            for pt in s.points:
                if pt.n_seeds > 1:
                    ax.annotate(
                        f"n={pt.n_seeds}",
                        (pt.x, pt.mean),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        if panel.series:
            if panel.metric == M.TEST_ACTIVE_UNITS:
                xs = sorted({pt.x for s in panel.series for pt in s.points})
                ax.plot(xs, xs, ":", color="grey", label="all units active")
            ax.legend(fontsize=7)
            ax.set_xscale("log", base=2 if panel.knob == "model.latent_dim" else 10)
            if panel.knob != "train.beta":  # a few integers: tick each one
                xs = sorted({pt.x for s in panel.series for pt in s.points})
                ax.set_xticks(xs, [str(x) for x in xs])
                ax.minorticks_off()
        if panel.knob == "train.beta":
            ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel(
            f"{knob_name(panel.knob)} (log scale)\n" + textwrap.fill(panel.note, 70), fontsize=8
        )
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
    title = (
        "Knobs against test metrics, each line among trials matched on the other "
        "searched knobs; n = finished runs (seeds) averaged, unmarked points are single "
        "runs; bars (where seeds are paired): +- the standard error of a point's difference "
        "from its line's first point over per-seed paired differences, as each panel says. "
        + (
            f"Searched knobs matched by: {matching_text(searched)}."
            if len(searched) > 1
            else "One knob searched."
        )
    )
    fig.suptitle(textwrap.fill(title, 60 + 60 * cols), fontsize=10)
    fig.tight_layout()
    return figure_files.save_figure(fig, path)
