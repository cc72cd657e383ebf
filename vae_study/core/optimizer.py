"""Adam and the learning-rate schedule of a run (``train.lr``, ``train.lr_schedule``)."""

from __future__ import annotations

import torch

from vae_study.config.run import TrainConfig

_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with ``train.lr``; torch's fused kernel where it has one (CPU, CUDA).

    The fused step is one pass over each parameter instead of a dozen elementwise ops.
    A checkpoint keeps the choice it was written with (Adam's param groups carry it).
    """
    device = next(model.parameters()).device
    return torch.optim.Adam(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
        fused=device.type in _FUSED_ADAM_DEVICES,
    )


# Burda et al. 2015: stage i in 0..7 runs 3**i of the 3280 epochs at lr * 10**(-i/7).
BURDA_STAGES = 8
_BURDA_ENDS = [(3 ** (i + 1) - 1) // 2 for i in range(BURDA_STAGES)]  # epochs done at its end


def scheduled_lr(cfg: TrainConfig, update: int, updates: int) -> float:
    """The learning rate of update ``update`` (0-based) of ``updates`` in the whole run.

    constant: ``train.lr``. burda: the stage whose share of the 3280 epochs holds the
    update's midpoint, ``(update + 0.5) / updates``; a pure function of the update's index,
    so a resumed run takes the rates an uninterrupted one takes.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    at = (update + 0.5) / updates * _BURDA_ENDS[-1]
    stage = next(i for i, end in enumerate(_BURDA_ENDS) if at < end or i == BURDA_STAGES - 1)
    return cfg.lr * 10.0 ** (-stage / 7)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``optimizer`` at ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_step(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, batch: int, n_batches: int
) -> None:
    """Before batch ``batch`` (0-based) of ``epoch`` (1-based, of ``n_batches`` each): the
    scheduled rate in ``optimizer``; nothing with a constant rate (Adam keeps ``train.lr``)."""
    if cfg.lr_schedule != "constant":
        update = (epoch - 1) * n_batches + batch
        set_lr(optimizer, scheduled_lr(cfg, update, cfg.epochs * n_batches))
