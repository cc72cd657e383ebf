"""The trainer: ``fit`` one configuration, reproducibly, resumably, on a CPU or a GPU.

One loop, ``train_runs``, trains ``fit``'s run and the members of ``fused.fit_pack`` alike:
each epoch, every run still training takes its next epoch (alone by ``train_epoch``: one
pass of Adam over shuffled device-resident batches; two or more at once by the pack's
stacked model), then ``validation_terms``, then its checkpoint (``run_state.RunState``), then
after its last epoch ``final_metrics``, then the ``on_epoch`` hook the Ray trainable reports
through. Torch and the standard library only: no Ray, no Optuna here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_study import metrics as M
from vae_study import timing
from vae_study.config.run import RunConfig
from vae_study.core.architectures import DEFAULT_SHAPE, Shape
from vae_study.core.batches import Batches
from vae_study.core.data import load_datasets
from vae_study.core.device import configure_backends, resolve_device
from vae_study.core.epoch import ProgressHook, train_epoch, validation_terms
from vae_study.core.evaluate import evaluate_test, evaluate_val
from vae_study.core.model import VAE
from vae_study.core.optimizer import make_optimizer
from vae_study.core.run_state import RunState, check_output_folder, clear_output_folder
from vae_study.core.splits import Datasets
from vae_study.errors import TrainingDiverged

# The seed of the final evaluation's own random stream (the z samples of the estimators):
# not train.seed, so every trial's model is scored with the same random numbers
# (``epoch.VALIDATION_SAMPLES_SEED`` is the per-epoch validation's).
FINAL_SAMPLES_SEED = 7  # val/nll and the test metrics when training ends

EpochHook = Callable[[dict[str, float], Path | None], None]
# on_epoch(run index, metrics, the run's checkpoint folder), after each run's epoch.
PackEpochHook = Callable[[int, dict[str, float], Path | None], None]
EvalProgressHook = Callable[[int, int], None]  # (test examples done for test/nll, total)
# Trains the next epoch of two or more runs at once; per run its row (epoch and training
# means), or None with the run's ``failed`` set.
TogetherEpoch = Callable[[list[RunState], Datasets], list[dict[str, float] | None]]


@dataclass
class FitResult:
    model: VAE
    history: list[dict[str, float]]
    final: dict[str, Any] = field(default_factory=dict)


def make_model(config: RunConfig, device: torch.device, shape: Shape = DEFAULT_SHAPE) -> VAE:
    """The model for examples of ``shape`` (C, H, W; ``data.shape``) with its seeded initial
    weights (same seed, same weights). A user model (``model.arch: package.module:Class``)
    is imported and probed here: a broken one is a ``ConfigError`` before any training."""
    torch.manual_seed(config.train.seed)
    return VAE(config.model, shape).to(device)


def start_run(
    config: RunConfig,
    device: torch.device,
    shape: Shape,
    *,
    out: Path | None = None,
    resume_from: str | Path | None = None,
) -> RunState:
    """A run of ``config``: its seeded model, Adam and training stream, continued from the
    checkpoint in ``resume_from`` (else its own in ``out``) if there is one."""
    model = make_model(config, device, shape)
    run = RunState(config, model, make_optimizer(model, config.train), device, out)
    run.resume(Path(resume_from) if resume_from is not None else None)
    return run


def run_data(config: RunConfig, device: torch.device, data: Datasets | None) -> Datasets:
    """``data`` on ``device`` (a copy if it lives elsewhere), else ``config``'s data section
    loaded there."""
    if data is None:
        return load_datasets(config.data, dequantize=config.dequantized, device=device)
    return data.to(device)


def final_metrics(
    model: VAE, data: Datasets, config: RunConfig, progress: EvalProgressHook | None = None
) -> dict[str, Any]:
    """``val/nll`` (what studies select on) and the ``test/...`` metrics, once, at the end."""
    g = torch.Generator(data.test.x.device).manual_seed(FINAL_SAMPLES_SEED)
    kinds = {"quantity": config.quantity, "dequantized": config.dequantized}
    out: dict[str, Any] = evaluate_val(model, data.val.x, config.eval, generator=g, **kinds)
    out.update(
        evaluate_test(model, data.test.x, config.eval, generator=g, progress=progress, **kinds)
    )
    if data.test.x.is_cuda:
        # The evaluation's decoder outputs are the run's memory peak; a trial on a shared GPU
        # (or a Ray actor reused for the next trial) must not keep that peak cached.
        torch.cuda.empty_cache()
    return out


def evaluate_final(
    run: RunState, data: Datasets, started: float, progress: EvalProgressHook | None = None
) -> dict[str, Any]:
    """``final_metrics`` of ``run`` after its last epoch, with the seconds since ``started``,
    kept and written by ``run.write_final``; a NaN or infinite one is ``TrainingDiverged``."""
    final = final_metrics(run.model, data, run.config, progress)
    for key in (*M.FINAL_VAL_SCALARS, *M.TEST_SCALARS):  # NaN: a diverged run, not a result
        if key in final and not math.isfinite(final[key]):
            raise TrainingDiverged(run.epoch, 0, final[key], what=key)
    # Seconds inside fit in this process: training, validation, final metrics.
    final[M.TOTAL_SECONDS] = time.perf_counter() - started
    run.write_final(final)
    return final


def fit(
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    data: Datasets | None = None,
    on_epoch: EpochHook | None = None,
    progress: ProgressHook | None = None,
    eval_progress: EvalProgressHook | None = None,
    final_eval: bool = True,
    fresh: bool = False,
) -> FitResult:
    """Train ``config`` and evaluate it on the test split.

    out_dir: where ``metrics.jsonl``, ``final.json``, ``config.yaml`` and ``checkpoint/``
    go (None: nothing is written), with the marker of a fit folder; a folder fit did not make
    is refused (``check_output_folder``). fresh: empty that folder once the data has loaded
    and train from epoch 1. A checkpoint in ``resume_from``, else in
    ``out_dir/checkpoint``, is continued exactly: weights, optimizer, epoch and RNG state.
    on_epoch(metrics, checkpoint folder) runs after each epoch's checkpoint is written.
    data: the splits, loaded once by the caller (a study's trials share them); on another
    device they are copied to ``train.device`` and the run uses that copy only (the caller
    decides whether its own is kept).
    """
    started = time.perf_counter()
    if out_dir is not None:
        check_output_folder(Path(out_dir))
    device = resolve_device(config.train.device)
    configure_backends(config.train, device)
    data = run_data(config, device, data)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and fresh:
        clear_output_folder(out)
    run = start_run(config, device, data.shape, out=out, resume_from=resume_from)
    train_runs(
        [run],
        data,
        started=started,
        final_eval=final_eval,
        on_epoch=None if on_epoch is None else (lambda _, row, folder: on_epoch(row, folder)),
        progress=progress,
        eval_progress=eval_progress,
    )
    if run.failed is not None:
        raise run.failed
    return FitResult(model=run.model, history=run.history, final=run.final)


def train_runs(
    runs: Sequence[RunState],
    data: Datasets,
    *,
    started: float,
    final_eval: bool = True,
    on_epoch: PackEpochHook | None = None,
    progress: ProgressHook | None = None,
    eval_progress: EvalProgressHook | None = None,
    together: TogetherEpoch | None = None,
) -> None:
    """Train every run of ``runs`` (resumed, one ``train.epochs`` for all) to its last epoch.

    A run resumed at or after its last epoch trains no more: its final metrics (those stored
    with its checkpoint, else evaluated) are reported once more. The others train epoch by
    epoch, each its own next epoch (runs resumed at different epochs train side by side):
    one alone by ``train_epoch`` (``progress`` per batch), two or more by ``together``; then
    per run its validation terms and its checkpoint, every checkpoint of the epoch before
    any hook; then per run, in order, its final metrics after its last epoch
    (``final_eval``; ``started``: when its clock started) and ``on_epoch(index in runs,
    metrics, checkpoint folder)``. A run whose loss, validation or final metrics are NaN or
    infinite gets ``failed`` set (not raised), keeps its last good checkpoint and leaves.
    """
    epochs = runs[0].config.train.epochs
    for j, run in enumerate(runs):
        if run.epoch >= epochs and final_eval:
            _finish_resumed(j, run, data, started, on_epoch, eval_progress)
    training = [j for j, run in enumerate(runs) if run.epoch < epochs]
    while training:
        live = [runs[j] for j in training]
        rows = _next_epoch(live, data, progress, together)
        for run, row in zip(live, rows, strict=True):
            if row is not None:
                run.save_epoch(row)
        for j, run in zip(training, live, strict=True):
            if run.failed is None and run.epoch == epochs and final_eval:
                # The final metrics travel with the last epoch's report, so a scheduler that
                # stops trials at the last epoch still sees them.
                try:
                    evaluate_final(run, data, started, eval_progress)
                except TrainingDiverged as exc:
                    run.failed = exc
            if run.failed is None and on_epoch is not None:
                on_epoch(j, {**run.history[-1], **run.final}, run.ckpt_dir)
        for run in live:
            if run.failed is not None or run.epoch == epochs:
                run.leave_stack()
        training = [j for j in training if runs[j].failed is None and runs[j].epoch < epochs]


def _next_epoch(
    live: list[RunState],
    data: Datasets,
    progress: ProgressHook | None,
    together: TogetherEpoch | None,
) -> list[dict[str, float] | None]:
    """The next epoch of each run in ``live``, trained and validated: per run its history
    row (the epoch's seconds: what each run of it waited), or None with ``failed`` set."""
    t0 = time.perf_counter()
    pack = {} if together is None else {"members": len(live)}
    with timing.phase("train_epoch", epoch=live[0].epoch + 1, examples=len(data.train), **pack):
        if len(live) == 1:
            rows = [_train_alone(live[0], data, progress)]
        else:
            assert together is not None, "two or more runs train together or not at all"
            rows = together(live, data)
    for j, (run, row) in enumerate(zip(live, rows, strict=True)):
        if row is None:
            continue
        try:
            epoch = int(row[M.EPOCH])
            with timing.phase("validation", epoch=epoch, examples=len(data.val)):
                row.update(validation_terms(run.model, data, epoch))
        except TrainingDiverged as exc:
            run.failed, rows[j] = exc, None
    seconds = time.perf_counter() - t0
    for row in rows:
        if row is not None:
            row[M.EPOCH_SECONDS] = seconds
    return rows


def _finish_resumed(
    index: int,
    run: RunState,
    data: Datasets,
    started: float,
    on_epoch: PackEpochHook | None,
    progress: EvalProgressHook | None,
) -> None:
    """A run resumed after its last epoch: the final metrics stored with its checkpoint
    (when the evaluation settings are the same), else evaluated now; reported once more."""
    final = run.stored_final() or {}
    try:
        if final:
            run.write_final(final)
        else:
            evaluate_final(run, data, started, progress)
    except TrainingDiverged as exc:
        run.failed = exc
        return
    if on_epoch is not None and run.history:
        on_epoch(index, {**run.history[-1], **run.final}, run.ckpt_dir)


def _train_alone(
    run: RunState, data: Datasets, progress: ProgressHook | None
) -> dict[str, float] | None:
    """The next epoch of ``run`` by ``train_epoch``: its row, or None with ``failed`` set."""
    run.leave_stack()
    epoch = run.epoch + 1
    batches = Batches(
        data.train,
        run.config.train.batch_size,
        shuffle=True,
        noise=data.train_noise,
        generator=run.generator,
    )
    try:
        means = train_epoch(
            run.model,
            run.optimizer,
            batches,
            run.config.train,
            epoch,
            generator=run.generator,
            progress=progress,
        )
    except TrainingDiverged as exc:
        run.failed = exc
        return None
    return {M.EPOCH: epoch, **means}
