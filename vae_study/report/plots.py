"""The figures of a study report, matplotlib with the Agg backend (no display needed).

Figures are ``matplotlib.figure.Figure`` objects, never pyplot's: building a report changes
no global state (a notebook's backend and open figures are left alone).

Each function draws one PNG from ``Trial`` objects and returns its path, or None with a note
when the study holds nothing to draw. Units are nats per example throughout.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.config.search import Param
from vae_study.records.folder import Trial
from vae_study.records.layout import COMPLETED, FAILED, PENDING, RUNNING, STOPPED
from vae_study.report.knobs import knob_name, knob_panels, matching_text

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
DPI = 110


VECTOR_SUFFIXES = (".pdf", ".svg")  # every figure is also written in these, beside its PNG
# Fonts embedded: TrueType (Type 42) in the PDF, not Type 3, as journals ask; glyphs as
# paths in the SVG, so neither file needs the fonts of the machine that opens it.
_VECTOR_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path"}


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as the PNG ``path`` and as a vector PDF and SVG of the same stem, each
    atomically (a temporary file renamed); returns ``path``."""
    with matplotlib.rc_context(_VECTOR_RC):
        for target in (path, *(path.with_suffix(s) for s in VECTOR_SUFFIXES)):
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=target.suffix[1:])
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    return path


def _beta_colour(trials: Sequence[Trial]) -> tuple[Any, Any]:
    betas = [t.beta for t in trials if t.beta > 0]
    lo, hi = (min(betas), max(betas)) if betas else (1.0, 1.0)
    if hi / lo > 1.0001:
        norm: Any = LogNorm(vmin=lo, vmax=hi)
    else:
        norm = Normalize(vmin=lo * 0.5, vmax=hi * 1.5)
    return norm, matplotlib.colormaps["viridis"]


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


def _staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
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


def _se_bars(
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
    norm, cmap = _beta_colour(done)
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
    _se_bars(ax, pts, "dimgrey", width=0.9, cap=2.5, zorder=2, label=RD_ERRORBAR_LABEL)
    fx, fy = _staircase([(rates[i], dists[i]) for i in pts.front])
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
    return _save(fig, path)


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
    _se_bars(ax, pts, "black", width=1.2, cap=3.5, zorder=5, label=RD_CONFIRMED_LABEL)
    ax.scatter(pts.rate, pts.distortion, **style, label=None if bar.any() else RD_CONFIRMED_LABEL)
    for t, x, y in zip(pts.trials, pts.rate, pts.distortion, strict=True):
        ax.annotate(
            f"confirmed {t.trial_id}",
            (x, y),
            fontsize=7,
            xytext=(5, -9),
            textcoords="offset points",
        )


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
    return _save(fig, path)


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
    norm, cmap = _beta_colour(done)
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
    return _save(fig, path)


def learning_curves(trials: Sequence[Trial], path: Path) -> Path | None:
    """Figure 4: validation -ELBO, rate, distortion per epoch; stopped and failed distinct."""
    with_history = [t for t in trials if t.history]
    if not with_history:
        return None
    norm, cmap = _beta_colour(with_history)
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
    return _save(fig, path)


def _grid(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """(rows*cols, H, W) grey or (rows*cols, H, W, 3) colour -> one picture with a white
    gutter: (rows*(H+pad)+pad, cols*(W+pad)+pad), with a trailing 3 for colour."""
    h, w = images.shape[1:3]
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:]))
    for i in range(min(len(images), rows * cols)):
        r, c = divmod(i, cols)
        out[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = images[i]
    return out


def _pictures(x: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat rows (N, C*H*W), channel-major, as images for imshow: (N, H, W) grey or
    (N, H, W, 3) RGB, clipped to [0, 1] (a Gaussian decoder's mean may leave it)."""
    c, h, w = shape
    images = x.detach().cpu().float().reshape(-1, c, h, w).numpy()
    images = images[:, 0] if c == 1 else images.transpose(0, 2, 3, 1)
    return np.clip(images, 0.0, 1.0)


def _show_grid(ax: Any, images: np.ndarray, rows: int, cols: int) -> None:
    grid = _grid(images, rows, cols)
    if grid.ndim == 2:
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(grid)  # RGB in [0, 1]


def model_pictures(
    trial: Trial,
    model: Any,
    x: Any,
    labels: Any,
    path: Path,
    title: str,
    *,
    shape: tuple[int, int, int] = (1, 28, 28),
) -> Path:
    """Figure 5 for one trial: reconstructions, prior samples, traversals, the latent space.

    ``x``: flat test rows (N, C*H*W) of images shaped ``shape`` = (C, H, W): one channel is
    drawn grey, three as RGB.
    """
    import torch

    from vae_study.core.evaluate import encode_all
    from vae_study.core.objectives import gaussian_kl

    g = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        xs = x[:10]
        mu, logvar = model.encode(xs)
        recon = model.mean(model.decode(mu))
        samples = model.mean(model.decode(torch.randn(32, model.latent_dim, generator=g)))
        mu_all, logvar_all = encode_all(model, x[:5000])
        kl = gaussian_kl(mu_all, logvar_all).mean(0)
        dims = torch.argsort(kl, descending=True)[: min(6, model.latent_dim)]
        steps = torch.linspace(-3, 3, 9)
        base = mu_all[0]
        trav = []
        for d in dims:
            z = base.repeat(len(steps), 1)
            z[:, d] = steps
            trav.append(model.mean(model.decode(z)))
        trav_img = torch.cat(trav)
    fig = Figure(figsize=(13, 10))
    axes = fig.subplots(2, 2)
    _show_grid(axes[0, 0], _pictures(torch.cat([xs, recon]), shape), 2, 10)
    axes[0, 0].set_title("test images (top) and their reconstructions (bottom, from mean z)")
    _show_grid(axes[0, 1], _pictures(samples, shape), 4, 8)
    axes[0, 1].set_title("samples: decoder mean at z ~ p(z) = N(0, I)")
    _show_grid(axes[1, 0], _pictures(trav_img, shape), len(dims), len(steps))
    axes[1, 0].set_title(
        "traversals of the dimensions with most KL: z_d from -3 to 3, "
        "the rest at E_q[z] of a test image",
        fontsize=10,
    )
    row = shape[1] + 2  # an image's height and the gutter
    axes[1, 0].set_yticks([2 + row * i + shape[1] // 2 for i in range(len(dims))])
    axes[1, 0].set_yticklabels([f"dim {int(d)}\n{float(kl[d]):.2f} nats" for d in dims], fontsize=8)
    axes[1, 0].set_xticks([])
    for spine in axes[1, 0].spines.values():
        spine.set_visible(False)
    for ax in (axes[0, 0], axes[0, 1]):
        ax.axis("off")
    pts = mu_all.numpy()
    if pts.shape[1] > 2:  # project on the two principal directions
        centred = pts - pts.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        pts = centred @ vt[:2].T
        axes[1, 1].set_xlabel("principal direction 1 of E_q[z]")
        axes[1, 1].set_ylabel("principal direction 2 of E_q[z]")
        how = "PCA projection of E_q[z]"
    else:
        if pts.shape[1] == 1:
            pts = np.concatenate([pts, np.zeros_like(pts)], 1)
        axes[1, 1].set_xlabel("E_q[z_1]")
        axes[1, 1].set_ylabel("E_q[z_2]")
        how = "E_q[z]"
    if labels is not None:
        sc = axes[1, 1].scatter(
            pts[:, 0], pts[:, 1], c=labels[: len(pts)].numpy(), cmap="tab10", s=3, alpha=0.7
        )
        fig.colorbar(sc, ax=axes[1, 1], label="class label")
    else:
        axes[1, 1].scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5)
    axes[1, 1].set_title(f"test set in latent space ({how}), {len(pts)} examples")
    axes[1, 1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def search_history(optuna_study: Any, objective: str, path: Path) -> Path | None:
    """Figure 6: Optuna's optimisation history and parameter importance."""
    import optuna

    done = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return None
    multi = len(optuna_study.directions) > 1
    fig = Figure(figsize=(14, 5))
    (ax1, ax2) = fig.subplots(1, 2)
    numbers = [t.number for t in done]
    values = [t.values[0] for t in done]
    ax1.plot(numbers, values, "o", label=objective)
    if not multi:
        best = (
            np.minimum.accumulate(values)
            if optuna_study.direction.name == "MINIMIZE"
            else np.maximum.accumulate(values)
        )
        ax1.plot(numbers, best, "-", color="crimson", label="best so far")
    ax1.set_xlabel("Optuna trial number")
    ax1.set_ylabel(f"{objective} [nats]")
    ax1.set_title("Search history" + (" (first objective)" if multi else ""))
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    try:
        target = (lambda t: t.values[0]) if multi else None
        imp = optuna.importance.get_param_importances(optuna_study, target=target)
    except Exception as exc:  # too few trials, a single parameter value, ...
        imp = {}
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ax2.text(
            0.5,
            0.5,
            f"parameter importance unavailable:\n{reason}",
            ha="center",
            va="center",
            transform=ax2.transAxes,
            wrap=True,
            color="grey",
        )
    if imp:
        names = list(imp)[::-1]
        ax2.barh(names, [imp[n] for n in names])
        ax2.set_xlabel(f"importance for {objective} (fANOVA)")
    ax2.set_title("Parameter importance")
    fig.tight_layout()
    return _save(fig, path)


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
            _se_bars(
                ax,
                pts,
                style.colour,
                width=0.9,
                cap=2.5,
                zorder=2,
                label=f"{style.label}: {RD_ERRORBAR_LABEL}",
            )
            fx, fy = _staircase([(pts.rate[i], pts.distortion[i]) for i in pts.front])
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
                _se_bars(ax, conf, style.colour, width=1.4, cap=4, zorder=4)
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
    return _save(fig, path)
