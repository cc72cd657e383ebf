"""The model pictures of a report (Figure 5): for the selected trial and a few of the front,
the model rebuilt from its checkpoint draws test images and their reconstructions, prior
samples, traversals of its most informative latent dimensions, and the test set in latent
space. A trial whose checkpoint is gone or unusable gets a note instead of pictures.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vae_study import metrics as M
from vae_study.records.folder import StudyFolder
from vae_study.records.pareto import spread
from vae_study.records.replicates import REPLICATE_KEY, SEED_KEY
from vae_study.records.trial import Trial
from vae_study.report import figure_files
from vae_study.report.headline import selection_words
from vae_study.report.trial_tables import fmt

MAX_MODEL_FIGURES = 5


def model_figures(
    sf: StudyFolder,
    best: Trial | None,
    front: list[Trial],
    front_words: str,
    out: Path,
    figures: list[tuple[str, str]],
    notes: list[str],
) -> None:
    """Draw the model pictures of ``best`` (the selected trial) and of up to
    ``MAX_MODEL_FIGURES`` in all spread along ``front`` (described by ``front_words``) into
    ``out``, appending (file name, title) to ``figures``; a trial that cannot be drawn (no
    checkpoint, an unusable one, unreadable test data) gets a line in ``notes``."""
    chosen: list[tuple[Trial, str]] = []
    if best is not None:
        chosen.append((best, selection_words(sf)))
    for t in spread(sorted(front, key=lambda t: t.beta), MAX_MODEL_FIGURES - len(chosen)):
        if all(t.trial_id != c.trial_id for c, _ in chosen):
            chosen.append((t, front_words.removeprefix("trials of the ")))
    if not chosen:
        return
    from vae_study.config.run import run_config_from_dict
    from vae_study.core.checkpoint import load
    from vae_study.core.data import load_datasets
    from vae_study.core.model import VAE
    from vae_study.errors import VaeStudyError

    try:
        data = load_datasets(sf.study.base.data, dequantize=sf.study.base.dequantized)
    except VaeStudyError as exc:
        notes.append(f"Model pictures skipped: the test data cannot be read ({exc}).")
        return
    for trial, why in sorted(chosen, key=lambda c: c[0].beta):
        if trial.checkpoint is None:
            notes.append(f"Trial {trial.trial_id}: no checkpoint left, its pictures are skipped.")
            continue
        try:
            state = load(trial.checkpoint)
            cfg = run_config_from_dict(state.config)
            model = VAE(cfg.model, state.shape)
            model.load_state_dict(state.model)
        except (VaeStudyError, RuntimeError, KeyError) as exc:
            notes.append(
                f"Trial {trial.trial_id}: its checkpoint cannot be used ({exc}); pictures skipped."
            )
            continue
        name = model_figure_name(trial.trial_id)
        # One member's model (the lowest replicate that finished), with its own numbers.
        member = trial.members[0] if trial.n_replicates > 1 and trial.members else trial
        which = (
            f"Configuration {trial.trial_id} ({why}), the model of its replicate "
            f"{fmt(member.value(REPLICATE_KEY))} (seed {fmt(member.value(SEED_KEY))})"
            if member is not trial
            else f"Trial {trial.trial_id} ({why})"
        )
        title = (
            f"{which}: beta {trial.beta:.3g}, latent size "
            f"{trial.latent_dim}, K {trial.k}, test -ELBO "
            f"{member.value(M.TEST_NEG_ELBO):.1f} = R {member.value(M.TEST_RATE):.1f} + "
            f"D {member.value(M.TEST_DISTORTION):.1f} nats"
        )
        model_pictures(
            trial, model, data.test.x, data.test.labels, out / name, title, shape=data.shape
        )
        figures.append((name, title))


def model_figure_name(trial_id: str) -> str:
    """``model_<trial id>.png``, a plain file name whatever the id holds (``/``, ``..``): other
    characters become ``_``, and a hash of the id keeps two such ids apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)[:80]
    if safe != trial_id:
        safe += "-" + hashlib.sha1(trial_id.encode("utf-8")).hexdigest()[:8]
    return f"model_{safe}.png"


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
    return figure_files.save_figure(fig, path)
