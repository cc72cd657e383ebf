"""One epoch of a run: a pass of Adam over the shuffled training batches (``train_epoch``),
then the validation terms (``validation_terms``). ``train.train_runs`` runs them epoch by
epoch; a pack of runs trains its epoch by ``fused.train_stacked`` instead, with the same
divergence checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vae_study import metrics as M
from vae_study.config.run import TrainConfig
from vae_study.core.batches import Batches
from vae_study.core.evaluate import elbo_terms
from vae_study.core.model import VAE
from vae_study.core.objectives import compute_terms
from vae_study.core.optimizer import schedule_step
from vae_study.core.splits import Datasets
from vae_study.errors import TrainingDiverged

# train.precision -> the autocast dtype of the encoder and decoder (None: plain float32).
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
CHECK_EVERY = 10  # batches between checks for a non-finite loss (each check syncs a GPU)

# The seed of the per-epoch validation's own random stream (the z samples of its -ELBO),
# plus the epoch number. Not train.seed: every trial's model is scored with the same
# random numbers, so differences between trials are the models', not the estimator's draws.
VALIDATION_SAMPLES_SEED = 1_000_003

ProgressHook = Callable[[int, int, int], None]  # (epoch, batches done, batches in epoch)


def train_epoch(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: TrainConfig,
    epoch: int,
    *,
    generator: torch.Generator | None = None,
    progress: ProgressHook | None = None,
) -> dict[str, float]:
    """One pass over the training batches; mean loss, rate and distortion per example.

    Batch statistics stay on the device (no host sync per batch on a GPU); the loss is
    checked for NaN or inf every ``CHECK_EVERY`` batches, and a bad one raises
    ``TrainingDiverged`` naming the first bad batch, before any checkpoint of it is written.
    """
    model.train()
    device = next(model.parameters()).device
    n_batches = len(batches)
    stats = torch.empty(n_batches, 3, device=device)  # per batch: mean loss, rate, distortion
    sizes = torch.empty(n_batches, dtype=torch.float64)
    checked = 0
    compute_dtype = COMPUTE_DTYPES[cfg.precision]
    for i, x in enumerate(batches):
        schedule_step(optimizer, cfg, epoch, i, n_batches)
        terms = compute_terms(
            model,
            x,
            k=cfg.k,
            beta=cfg.beta,
            objective=cfg.objective,
            generator=generator,
            compute_dtype=compute_dtype,
        )
        loss = terms.loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch.stack((loss, terms.rate.mean(), terms.distortion.mean()), out=stats[i])
        sizes[i] = x.shape[0]
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == n_batches:
            _check_finite(stats[checked : i + 1, 0], epoch, first_batch=checked + 1)
            checked = i + 1
        if progress is not None:
            progress(epoch, i + 1, n_batches)
    means = (stats.double().cpu() * sizes[:, None]).sum(0) / sizes.sum()  # per example
    loss_mean, rate_mean, dist_mean = means.tolist()
    return {M.TRAIN_LOSS: loss_mean, M.TRAIN_RATE: rate_mean, M.TRAIN_DISTORTION: dist_mean}


def _check_finite(losses: torch.Tensor, epoch: int, first_batch: int) -> None:
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise TrainingDiverged(epoch, first_batch + bad, float(losses[bad]))


def validation_terms(model: VAE, data: Datasets, epoch: int) -> dict[str, float]:
    """-ELBO, rate and distortion on the (fixed) validation split after an epoch."""
    if len(data.val) == 0:
        return {}
    model.eval()
    g = torch.Generator(data.val.x.device).manual_seed(VALIDATION_SAMPLES_SEED + epoch)
    terms = elbo_terms(model, data.val.x, generator=g)
    model.train()
    out = {
        M.VAL_NEG_ELBO: terms["neg_elbo"],
        M.VAL_RATE: terms["rate"],
        M.VAL_DISTORTION: terms["distortion"],
    }
    for key, value in out.items():
        if not math.isfinite(value):
            raise TrainingDiverged(epoch, 0, value, what=key)
    return out
