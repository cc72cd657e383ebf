"""Fused members: several configurations of one architecture trained at once.

A *pack* is M members that share every shape-determining key (the data section, the model
section but ``gaussian_std``, and ``train.k``, ``objective``, ``batch_size``, ``epochs``,
``precision``, ``device``) and differ in ``train.beta``, ``train.seed``, ``train.lr``,
``model.gaussian_std`` and the ``eval`` section. ``fit_pack`` is ``fit`` over a stacked
model: the same loop (``train.train_runs``) trains one ``RunState`` per member, the members'
epochs taken together by ``train_stacked`` over their stacked weights (``stacked``: MLPs as
batched matmuls, conv and user models under ``torch.func.vmap`` when a probe shows it runs
them as they run alone; else the members train one after another, each by ``train.fit``:
``fusion_mode`` says which and why).

Each member is still a run of its own, equal to ``train.fit`` of its configuration: its
model, Adam (torch's own step, once per member with its lr, on its views of the stack),
training stream and folder are those ``fit`` makes (``train.start_run``); its own generator
draws, in ``fit``'s order, its batches, their noise and its reparameterisation noise; the
loss is the sum of the members' batch-mean losses, so each gradient is the member's own. A
member that diverges is frozen, gets its ``TrainingDiverged`` in its slot and keeps its last
good checkpoint; the others go on. Its numbers do not depend on M or on its pack-mates, up
to float rounding (a batched matmul kernel is not bit-for-bit the single one); a member
training alone (M = 1, or the last one left) goes through ``epoch.train_epoch``: ``fit``'s
trainer, bit for bit.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vae_study import metrics as M
from vae_study.config.run import RunConfig, to_dict
from vae_study.core import train as T
from vae_study.core.architectures import DEFAULT_SHAPE
from vae_study.core.batches import Batches
from vae_study.core.checkpoint import flatten_keys
from vae_study.core.device import configure_backends, resolve_device
from vae_study.core.epoch import CHECK_EVERY, COMPUTE_DTYPES
from vae_study.core.objectives import compute_terms
from vae_study.core.optimizer import schedule_step
from vae_study.core.run_state import RunState, check_output_folder
from vae_study.core.splits import Datasets
from vae_study.core.stacked import Stack, StackedMLP, StackedVmap, vmap_probe
from vae_study.errors import ConfigError, TrainingDiverged

# The keys members of one pack may differ in: per-member scalars. Every other key is shared.
MEMBER_KEYS = ("train.beta", "train.seed", "train.lr", "model.gaussian_std")
MEMBER_PREFIXES = ("eval.",)  # evaluation happens per member, after training

log = logging.getLogger("vae_study")


def check_packable(configs: Sequence[RunConfig]) -> None:
    """Refuse configurations that cannot train as one pack, naming the first shared key that
    differs (in config order) and the member that differs."""
    if not configs:
        raise ConfigError("fit_pack: got no configurations; give at least one")
    first = flatten_keys(to_dict(configs[0]))
    for i, config in enumerate(configs[1:], start=1):
        flat = flatten_keys(to_dict(config))
        # Every key either has: model.options.<name> of a user model included (a key one
        # member sets and the other leaves to the class's default differs too).
        for key in [*first, *(k for k in flat if k not in first)]:
            if key in MEMBER_KEYS or key.startswith(MEMBER_PREFIXES):
                continue
            if flat.get(key) != first.get(key):
                raise ConfigError(
                    f"{key}: member {i} has {_short(flat.get(key))}, member 0 has "
                    f"{_short(first.get(key))}; members of a pack share every key but "
                    f"{', '.join(MEMBER_KEYS)} and eval.*; train them in separate packs"
                )


STACKED = "stacked"  # model.arch: mlp: each layer one batched matmul over the members
VMAP = "vmap"  # conv and user models: torch.func.vmap of the member's own encode and decode
SEQUENTIAL = "sequential"  # what vmap cannot run: the members one after another, each fit


def fusion_mode(
    configs: Sequence[RunConfig], shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> tuple[str, str]:
    """How ``fit_pack`` trains these members on examples of ``shape``, and why:

    - ``stacked``: MLP members, each layer one batched matmul (``StackedMLP``);
    - ``vmap``: conv and user models that ``torch.func.vmap`` runs, as found on a probe batch
      (outputs equal to each member's own, gradients reaching every parameter):
      ``StackedVmap``;
    - ``sequential``: the others (random ops or buffers in the model, an op vmap lacks...):
      each member trained by ``train.fit`` in turn, in the same call, the reason given.
    """
    check_packable(configs)
    arch = configs[0].model.arch
    if arch == "mlp":
        return STACKED, "model.arch: mlp: the layers' weights stacked over the members"
    if len(configs) == 1:
        return SEQUENTIAL, "one member: trained by train.fit"
    reason = vmap_probe(configs[0], shape)
    if reason is None:
        return VMAP, f"model.arch: {arch}: torch.func.vmap over the members passed the probe"
    return SEQUENTIAL, (
        f"model.arch: {arch}: torch.func.vmap cannot run it ({reason}); the members train one "
        "after another, each as train.fit would"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fit_pack(
    configs: Sequence[RunConfig],
    *,
    out_dirs: Sequence[str | Path] | None = None,
    data: Datasets | None = None,
    on_epoch: T.PackEpochHook | None = None,
    final_eval: bool = True,
) -> list[T.FitResult | TrainingDiverged]:
    """Train ``configs`` as one pack; per member, what ``train.fit`` would return.

    out_dirs: one output folder per member, laid out as ``fit``'s (None: nothing written);
    a member with a checkpoint there continues it exactly, whatever epoch it stopped at.
    on_epoch(member index, metrics, checkpoint folder) runs after each member epoch, once
    every member's checkpoint of that epoch is written. A member whose loss or validation
    metrics become NaN or infinite gets its ``TrainingDiverged`` in its slot (not raised).
    """
    started = time.perf_counter()
    check_packable(configs)
    outs = _member_folders(configs, out_dirs)
    first = configs[0]
    device = resolve_device(first.train.device)
    configure_backends(first.train, device)  # as fit: the members share train.tf32
    data = T.run_data(first, device, data)

    mode, why = fusion_mode(configs, data.shape)
    log.info("fit_pack: %d members, %s: %s", len(configs), mode, why)
    if mode == SEQUENTIAL:
        return [
            _fit_alone(j, c, o, data, on_epoch, final_eval)
            for j, (c, o) in enumerate(zip(configs, outs, strict=True))
        ]
    runs = [T.start_run(c, device, data.shape, out=o) for c, o in zip(configs, outs, strict=True)]
    stack = StackedVmap if mode == VMAP else StackedMLP
    T.train_runs(
        runs,
        data,
        started=started,
        final_eval=final_eval,
        on_epoch=on_epoch,
        together=functools.partial(train_stacked, stack_type=stack),
    )
    return [run.failed or T.FitResult(run.model, run.history, run.final) for run in runs]


def _member_folders(
    configs: Sequence[RunConfig], out_dirs: Sequence[str | Path] | None
) -> list[Path | None]:
    """Each member's output folder (None: nothing written), after fit's check of each; one
    folder per member, none shared."""
    if out_dirs is not None and len(out_dirs) != len(configs):
        raise ConfigError(
            f"fit_pack: got {len(out_dirs)} out_dirs for {len(configs)} "
            "configurations; give one folder per member"
        )
    outs = [Path(d) for d in out_dirs] if out_dirs is not None else [None] * len(configs)
    named = [o.resolve() for o in outs if o is not None]
    if len(set(named)) != len(named):
        raise ConfigError("fit_pack: two members share an output folder; give each its own")
    for out in outs:
        if out is not None:
            check_output_folder(out)
    return outs


def _fit_alone(
    index: int,
    config: RunConfig,
    out: Path | None,
    data: Datasets,
    on_epoch: T.PackEpochHook | None,
    final_eval: bool,
) -> T.FitResult | TrainingDiverged:
    """A member trained by ``fit`` (the sequential mode)."""
    hook = None if on_epoch is None else (lambda row, folder: on_epoch(index, row, folder))
    try:
        return T.fit(config, out_dir=out, data=data, on_epoch=hook, final_eval=final_eval)
    except TrainingDiverged as exc:
        return exc


def train_stacked(
    runs: list[RunState], data: Datasets, stack_type: type[Stack]
) -> list[dict[str, float] | None]:
    """The next epoch of two or more runs (each its own next epoch) over their stacked
    model: one batched step per batch, then each run's own Adam step. Per run its row (epoch
    and training means, as ``epoch.train_epoch`` gives them), or None for a run whose loss
    became NaN or infinite: it is frozen (no update from that batch on), ``failed`` set."""
    for run in runs:
        run.model.train()
    stack = stack_type([r.model for r in runs], [r.generator for r in runs])
    cfg = runs[0].config.train
    device = data.train.x.device
    n_members = len(runs)
    batches = [
        iter(
            Batches(
                data.train,
                cfg.batch_size,
                shuffle=True,
                noise=data.train_noise,
                generator=r.generator,
            )
        )
        for r in runs
    ]
    n_batches = -(-len(data.train) // cfg.batch_size)
    epochs = [r.epoch + 1 for r in runs]  # the epoch each run trains now
    betas = torch.tensor([r.config.train.beta for r in runs], device=device)[:, None]
    unit_beta = all(r.config.train.beta == 1.0 for r in runs)
    compute_dtype = COMPUTE_DTYPES[cfg.precision]
    # A CPU reads a loss for free: check every batch, so a member is frozen at its first
    # bad batch. A GPU syncs on a read: check every CHECK_EVERY batches, as train_epoch does
    # (a diverged member's weights after its bad batch are then never saved or returned).
    check_every = 1 if device.type == "cpu" else CHECK_EVERY
    live = torch.ones(n_members, dtype=torch.bool, device=device)
    live_host = [True] * n_members
    stats = torch.empty(n_batches, n_members, 3, device=device)  # per batch, member: loss, R, D
    sizes = torch.empty(n_batches, dtype=torch.float64)
    checked = 0
    for i in range(n_batches):
        x = torch.stack([next(b) for b in batches])  # (M, B, P)
        if cfg.objective == "elbo":
            terms = compute_terms(
                stack,
                x,
                k=cfg.k,
                objective="elbo",  # type: ignore[arg-type]
                compute_dtype=compute_dtype,
            )
            loss = terms.loss if unit_beta else terms.distortion + betas * terms.rate
        else:  # beta inside the importance weights, per member: (M, 1) against (K, M, B)
            terms = compute_terms(
                stack,
                x,
                k=cfg.k,
                beta=betas,  # type: ignore[arg-type]
                objective="iwae",
                compute_dtype=compute_dtype,
            )
            loss = terms.loss
        loss_means = loss.mean(1)  # (M,): each member's batch-mean loss
        with torch.no_grad():
            torch.stack(
                (loss_means, terms.rate.mean(1), terms.distortion.mean(1)), dim=1, out=stats[i]
            )
        sizes[i] = x.shape[1]
        if (i + 1) % check_every == 0 or i + 1 == n_batches:
            for j, exc in _diverged(
                stats[checked : i + 1, :, 0], live_host, epochs, first_batch=checked + 1
            ):
                runs[j].failed, live_host[j], live[j] = exc, False, False
            checked = i + 1
        if not any(live_host):
            break
        stack.zero_grad()
        # Each member's gradient is that of its own batch mean; a diverged one's is excluded.
        torch.where(live, loss_means, 0.0).sum().backward()
        for j, r in enumerate(runs):
            if live_host[j]:
                stack.set_member_grads(j)
                schedule_step(r.optimizer, r.config.train, epochs[j], i, n_batches)
                r.optimizer.step()
    stack.zero_grad()
    rows: list[dict[str, float] | None] = []
    for j, r in enumerate(runs):
        r.model.zero_grad(set_to_none=True)
        if not live_host[j]:
            rows.append(None)
            continue
        means = (stats[:, j].double().cpu() * sizes[:, None]).sum(0) / sizes.sum()
        loss_mean, rate_mean, dist_mean = means.tolist()
        rows.append(
            {
                M.EPOCH: epochs[j],
                M.TRAIN_LOSS: loss_mean,
                M.TRAIN_RATE: rate_mean,
                M.TRAIN_DISTORTION: dist_mean,
            }
        )
    return rows


def _diverged(
    losses: torch.Tensor, live: list[bool], epochs: list[int], first_batch: int
) -> list[tuple[int, TrainingDiverged]]:
    """Live members with a non-finite loss among ``losses`` (batches, M), each with the
    ``TrainingDiverged`` of its first bad batch (as ``epoch.train_epoch`` would raise it)."""
    losses = losses.cpu()
    bad = ~torch.isfinite(losses)
    out = []
    for j in bad.any(0).nonzero().flatten().tolist():
        if live[j]:
            row = int(bad[:, j].nonzero()[0, 0])
            out.append((j, TrainingDiverged(epochs[j], first_batch + row, float(losses[row, j]))))
    return out
