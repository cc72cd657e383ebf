"""The rate-distortion plane of a study (Figure 1 of its report) and its data.

Each finished configuration (a trial of a one-seed study) is a point at its mean test (rate,
distortion) over its seeds, with +- standard-error bars where it has several seeds; the
Pareto front of those means is a staircase. ``rd_points`` computes what is plotted, so tests
check the numbers, not pixels. Units are nats per example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.figure_style import MARKERS, beta_colour


def _marker_key(trials: Sequence[Trial]) -> tuple[str, dict[Any, str]]:
    """Marker by latent size if it varies, else by K."""
    for attr, label in (("latent_dim", "latent size"), ("k", "K")):
        values = sorted({getattr(t, attr) for t in trials})
        if len(values) > 1:
            return attr, {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(values)} | {
                "__label__": label
            }
    return "latent_dim", {v: "o" for v in {t.latent_dim for t in trials}} | {
        "__label__": "latent size"
    }


def staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The Pareto front of (rate, distortion) as a staircase, both minimised."""
    pts = sorted(points)
    xs, ys = [], []
    for i, (x, y) in enumerate(pts):
        if i:
            xs.append(x)
            ys.append(pts[i - 1][1])
        xs.append(x)
        ys.append(y)
    return xs, ys


@dataclass(frozen=True)
class RDPoints:
    """What the rate-distortion plane plots: one point per finished configuration (a trial
    of a one-seed study), its mean test rate and distortion over its seeds, their standard
    errors (nan: none, one seed; no bar is drawn then, not a bar of 0) and the Pareto front
    of the means."""

    trials: tuple[Trial, ...]
    rate: np.ndarray  # (n,) mean test rate of each configuration
    distortion: np.ndarray  # (n,)
    rate_se: np.ndarray  # (n,) nan where there is no standard error
    distortion_se: np.ndarray  # (n,)
    front: tuple[int, ...]  # indices of the front of the means

    @property
    def has_bar(self) -> np.ndarray:
        """(n,) bool: the points drawn with error bars (both standard errors known)."""
        return np.isfinite(self.rate_se) & np.isfinite(self.distortion_se)


def rd_points(trials: Sequence[Trial]) -> RDPoints | None:
    """The data of the rate-distortion plane (``RDPoints``); None when nothing finished."""
    from vae_study.records.pareto import pareto_front

    done = tuple(
        t
        for t in trials
        if t.finished
        and math.isfinite(t.value(M.TEST_RATE))
        and math.isfinite(t.value(M.TEST_DISTORTION))
    )
    if not done:
        return None

    def se(t: Trial, key: str) -> float:
        e = t.error(key)
        return math.nan if e is None else e

    rates = np.array([t.value(M.TEST_RATE) for t in done])
    dists = np.array([t.value(M.TEST_DISTORTION) for t in done])
    front = pareto_front(list(zip(rates, dists, strict=True)), ["min", "min"])
    return RDPoints(
        done,
        rates,
        dists,
        np.array([se(t, M.TEST_RATE) for t in done]),
        np.array([se(t, M.TEST_DISTORTION) for t in done]),
        tuple(front),
    )


RD_ERRORBAR_LABEL = "mean +- standard error over seeds"


def se_bars(
    ax: Any,
    pts: RDPoints,
    colour: str,
    *,
    width: float,
    cap: float,
    zorder: int,
    label: str | None = None,
) -> None:
    """± standard-error bars in rate and distortion for the points of ``pts`` that have
    them (none for a point of one seed: never a bar of 0)."""
    bar = pts.has_bar
    if not bar.any():
        return
    ax.errorbar(
        pts.rate[bar],
        pts.distortion[bar],
        xerr=pts.rate_se[bar],
        yerr=pts.distortion_se[bar],
        fmt="none",
        ecolor=colour,
        elinewidth=width,
        capsize=cap,
        zorder=zorder,
        label=label,
    )


def rate_distortion_plane(
    trials: Sequence[Trial],
    path: Path,
    *,
    show_paths: bool = True,
    selected: Sequence[Trial] = (),
    selected_label: str = "",
    confirmed: Sequence[Trial] = (),
) -> Path | None:
    """Figure 1: every finished configuration (trial) at its mean test (rate, distortion),
    with +- standard-error bars in both where it has several seeds (``rd_points``); the
    Pareto front of those means; iso -ELBO lines; ``selected`` (the study's selection, made
    on its objectives) ringed and labelled ``selected_label``; ``confirmed`` (the
    confirmation stage's configurations) at their mean over the fresh seeds, white diamonds
    with their own bars (``RD_CONFIRMED_LABEL``)."""
    pts = rd_points(trials)
    if pts is None:
        return None
    done = list(pts.trials)
    replicated = any(t.n_seeds > 1 for t in done)
    norm, cmap = beta_colour(done)
    attr, markers = _marker_key(done)
    fig = Figure(figsize=(8.5, 6.5))
    ax = fig.subplots()
    if show_paths:
        for t in done:
            r = [h.get(M.VAL_RATE) for h in t.history]
            d = [h.get(M.VAL_DISTORTION) for h in t.history]
            if len(r) > 1:
                ax.plot(r, d, "-", color=cmap(norm(t.beta)), alpha=0.25, lw=0.8, zorder=1)
    for value in sorted({getattr(t, attr) for t in done}):
        group = [t for t in done if getattr(t, attr) == value]
        ax.scatter(
            [t.value(M.TEST_RATE) for t in group],
            [t.value(M.TEST_DISTORTION) for t in group],
            c=[t.beta for t in group],
            cmap=cmap,
            norm=norm,
            s=55,
            marker=markers[value],
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            label=f"{markers['__label__']} {value}",
        )
    rates, dists = pts.rate, pts.distortion
    se_bars(ax, pts, "dimgrey", width=0.9, cap=2.5, zorder=2, label=RD_ERRORBAR_LABEL)
    fx, fy = staircase([(rates[i], dists[i]) for i in pts.front])
    ax.plot(
        fx,
        fy,
        "-",
        color="crimson",
        lw=1.6,
        zorder=2,
        label="Pareto front of the mean test (rate, distortion) shown"
        if replicated
        else "Pareto front of the test (rate, distortion) shown",
    )
    done_ids = {t.trial_id for t in done}
    shown = [t for t in selected if t.trial_id in done_ids]
    if shown:
        ax.scatter(
            [t.value(M.TEST_RATE) for t in shown],
            [t.value(M.TEST_DISTORTION) for t in shown],
            s=140,
            marker="s",
            facecolors="none",
            edgecolors="black",
            linewidths=1.4,
            zorder=4,
            label=selected_label,
        )
    _confirmed_points(ax, confirmed)
    # Lines of equal -ELBO: R + D = c. The best one touches the front where beta = 1 is
    # the tangent slope (-1).
    total = rates + dists
    best = int(np.argmin(total))
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    levels = sorted({float(total[best])} | set(np.quantile(total, [0.5, 1.0]).tolist()))
    for j, c in enumerate(levels):
        xs = np.linspace(x0, x1, 50)
        ax.plot(xs, c - xs, "--", color="grey" if j else "black", lw=0.9, zorder=0)
        xl = min(max(c - y1 * 0.98, x0), x1)
        ax.annotate(
            f"-ELBO = {c:.1f}" + (" (best)" if j == 0 else ""),
            (xl, c - xl),
            fontsize=8,
            color="black" if j == 0 else "grey",
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.scatter(
        [rates[best]],
        [dists[best]],
        s=220,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.8,
        zorder=4,
        label=f"best test -ELBO ({'configuration' if replicated else 'trial'} "
        f"{done[best].trial_id})",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("rate R = KL(q(z|x) || p(z))  [nats per example]")
    ax.set_ylabel("distortion D = -E_q[log p(x|z)]  [nats per example]")
    ax.set_title(
        "Rate-distortion plane of the study (test split"
        + ("; configuration means over seeds)" if replicated else ")")
        + ("; faint lines: validation path over epochs" if show_paths else "")
    )
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="beta")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return figure_files.save_figure(fig, path)


RD_CONFIRMED_LABEL = "confirmed: mean +- standard error over fresh seeds"


def _confirmed_points(ax: Any, confirmed: Sequence[Trial]) -> None:
    """The confirmed configurations on the R-D plane, bars where they have them."""
    pts = rd_points(confirmed)
    if pts is None:
        return
    bar = pts.has_bar
    style = {
        "marker": "D",
        "s": 70,
        "facecolors": "white",
        "edgecolors": "black",
        "linewidths": 1.2,
        "zorder": 5,
    }
    se_bars(ax, pts, "black", width=1.2, cap=3.5, zorder=5, label=RD_CONFIRMED_LABEL)
    ax.scatter(pts.rate, pts.distortion, **style, label=None if bar.any() else RD_CONFIRMED_LABEL)
    for t, x, y in zip(pts.trials, pts.rate, pts.distortion, strict=True):
        ax.annotate(
            f"confirmed {t.trial_id}",
            (x, y),
            fontsize=7,
            xytext=(5, -9),
            textcoords="offset points",
        )
