"""The R-D planes of a comparison: several studies on shared axes, each in its own colour
and marker (``StudyStyle``), one panel per evaluation."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.knob_matching import knob_name
from vae_study.report.rd_plane import RD_ERRORBAR_LABEL, rd_points, se_bars, staircase


@dataclass(frozen=True)
class StudyStyle:
    """How one study is drawn on a comparison's planes: its label, colour and marker."""

    label: str
    colour: str
    marker: str
    keys: tuple[str, ...] = ()  # searched keys: each point is labelled with their values


STUDY_COLOURS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
]


MAX_POINT_LABELS = 20  # a study with more configurations than this gets no point labels


def _point_value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def study_planes(
    panels: Sequence[tuple[str, Sequence[tuple[StudyStyle, Sequence[Trial], Sequence[Trial]]]]],
    path: Path,
) -> Path | None:
    """The R-D planes of several studies: one panel per ``(title, studies)``, each study
    ``(style, configurations, confirmed)`` in its colour and marker: its finished
    configurations at their mean test (rate, distortion) with +- s.e. bars (``rd_points``),
    the staircase of its front of those means, its confirmed configurations as large hollow
    markers with their own bars. Every study on a panel shares its axes; panels do not share
    axes (another evaluation, maybe another quantity). None when no study has a finished
    configuration."""
    drawn = [(t, [s for s in studies if rd_points(s[1]) is not None]) for t, studies in panels]
    drawn = [(t, s) for t, s in drawn if s]
    if not drawn:
        return None
    fig = Figure(figsize=(8.5, 6.5 * len(drawn)))
    axes = fig.subplots(len(drawn), 1, squeeze=False)[:, 0]
    for ax, (title, studies) in zip(axes, drawn, strict=True):
        for style, configs, confirmed in studies:
            pts = rd_points(configs)
            assert pts is not None
            ax.scatter(
                pts.rate,
                pts.distortion,
                s=45,
                marker=style.marker,
                color=style.colour,
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
                label=f"{style.label}: configurations (mean test R, D)",
            )
            if style.keys and len(pts.trials) <= MAX_POINT_LABELS:
                for t, x, y in zip(pts.trials, pts.rate, pts.distortion, strict=True):
                    text = ", ".join(
                        f"{knob_name(k)}={_point_value(t.params.get(k))}" for k in style.keys
                    )
                    ax.annotate(
                        text,
                        (x, y),
                        fontsize=7,
                        color=style.colour,
                        xytext=(5, 4),
                        textcoords="offset points",
                    )
            se_bars(
                ax,
                pts,
                style.colour,
                width=0.9,
                cap=2.5,
                zorder=2,
                label=f"{style.label}: {RD_ERRORBAR_LABEL}",
            )
            fx, fy = staircase([(pts.rate[i], pts.distortion[i]) for i in pts.front])
            ax.plot(
                fx,
                fy,
                "-",
                color=style.colour,
                lw=1.6,
                zorder=2,
                label=f"{style.label}: front of the means",
            )
            conf = rd_points(confirmed)
            if conf is not None:
                se_bars(ax, conf, style.colour, width=1.4, cap=4, zorder=4)
                ax.scatter(
                    conf.rate,
                    conf.distortion,
                    s=160,
                    marker=style.marker,
                    facecolors="none",
                    edgecolors=style.colour,
                    linewidths=2.0,
                    zorder=5,
                    label=f"{style.label}: confirmed (fresh seeds)",
                )
        ax.set_xlabel("rate R = KL(q(z|x) || p(z))  [nats per example]")
        ax.set_ylabel("distortion D = -E_q[log p(x|z)]  [nats per example]")
        ax.set_title("\n".join(textwrap.wrap(title, 95)), fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_files.save_figure(fig, path)
