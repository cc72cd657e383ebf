"""The trainer: ``fit`` one configuration, reproducibly, resumably, on a CPU or a GPU.

``fit`` is built from ``train_epoch`` (one pass of Adam over shuffled device-resident
batches) and ``validation_terms``; after each epoch it writes a checkpoint and calls ``on_epoch``,
the hook the Ray trainable reports through. Torch and the standard library only: no Ray,
no Optuna here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_study import files, marker, timing
from vae_study import metrics as M
from vae_study.config.run import RUN_SECTIONS, RunConfig, TrainConfig
from vae_study.config.schema import to_dict
from vae_study.config.yaml_file import read_yaml, write_yaml
from vae_study.core import checkpoint as ckpt
from vae_study.core.architectures import DEFAULT_SHAPE, Shape
from vae_study.core.batches import Batches
from vae_study.core.data import load_datasets
from vae_study.core.device import configure_backends, resolve_device, restore_generator
from vae_study.core.evaluate import elbo_terms, evaluate_test, evaluate_val
from vae_study.core.model import VAE
from vae_study.core.objectives import compute_terms
from vae_study.core.splits import Datasets
from vae_study.errors import CheckpointError, ConfigError, TrainingDiverged
from vae_study.run_files import CHECKPOINT_DIR, CONFIG_FILE, FINAL_FILE, METRICS_FILE

# Keys that may change between a checkpoint and the run that resumes it: they do not change
# what was trained so far (more epochs, another device, another evaluation).
RESUMABLE_CHANGES = ("train.epochs", "train.device", "data.root", "eval.")

_FUSED_ADAM_DEVICES = ("cpu", "cuda")
# train.precision -> the autocast dtype of the encoder and decoder (None: plain float32).
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
CHECK_EVERY = 10  # batches between checks for a non-finite loss (each check syncs a GPU)

# Seeds of the evaluation's own random streams (the z samples of the estimators). They do
# not depend on train.seed: every trial's model is scored with the same random numbers, so
# differences between trials are the models', not the estimators' draws.
VALIDATION_SAMPLES_SEED = 1_000_003  # per-epoch validation -ELBO, plus the epoch number
FINAL_SAMPLES_SEED = 7  # val/nll and the test metrics when training ends

EpochHook = Callable[[dict[str, float], Path | None], None]
ProgressHook = Callable[[int, int, int], None]  # (epoch, batches done, batches in epoch)
EvalProgressHook = Callable[[int, int], None]  # (test examples done for test/nll, total)


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


def make_optimizer(model: VAE, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with ``train.lr``; torch's fused kernel where it has one (CPU, CUDA).

    The fused step is one pass over each parameter instead of a dozen elementwise ops: on
    the seed model it takes 0.17 ms instead of 0.44 ms on a 2-core CPU, a tenth of a batch.
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


def check_resumable(saved: dict[str, Any], config: RunConfig, where: Path) -> None:
    """Refuse to continue a checkpoint trained under a different configuration."""
    now = flatten_keys(to_dict(config))
    # A key the checkpoint lacks is newer than it: the run was trained with its default.
    before = {**flatten_keys(to_dict(RunConfig())), **flatten_keys(saved)}
    # A scheduled learning rate is a function of the whole run's length: more epochs would
    # have given the epochs done other rates.
    free = tuple(
        c
        for c in RESUMABLE_CHANGES
        if c != "train.epochs" or now.get("train.lr_schedule") == "constant"
    )
    changed = [
        k
        for k in sorted(set(now) | set(before))
        if now.get(k) != before.get(k)
        and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in free)
    ]
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"the checkpoint in {where} was trained with another "
            f"configuration ({diffs}); use another output folder or "
            "--fresh to start over"
        )


def check_shape(saved: tuple[int, ...], now: tuple[int, ...], where: Path) -> None:
    """Refuse to continue a checkpoint made for examples of another (C, H, W)."""
    if tuple(saved) != tuple(now):
        raise CheckpointError(
            f"the checkpoint in {where} was trained on examples of shape (C, H, W) = "
            f"{tuple(saved)}, but the data are {tuple(now)}; use the data it was trained "
            "on, another output folder, or --fresh to start over"
        )


def flatten_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat


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
    if data is None:
        data = load_datasets(config.data, dequantize=config.dequantized, device=device)
    else:
        data = data.to(device)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / CHECKPOINT_DIR if out is not None else None
    if out is not None and fresh:
        clear_output_folder(out)

    model = make_model(config, device, data.shape)
    optimizer = make_optimizer(model, config.train)
    generator = torch.Generator(device).manual_seed(config.train.seed)  # the training stream
    source = Path(resume_from) if resume_from is not None else ckpt_dir
    history = _resume(source, config, model, optimizer, generator, ckpt_dir, device)
    if out is not None:
        marker.write(out, marker.FIT)  # also marks a folder an older vae_study wrote
        write_yaml(out / CONFIG_FILE, to_dict(config))
        rewrite_metrics(out / METRICS_FILE, history)

    batches = Batches(
        data.train,
        config.train.batch_size,
        shuffle=True,
        noise=data.train_noise,
        generator=generator,
    )
    epochs_done = int(history[-1][M.EPOCH]) if history else 0
    final: dict[str, Any] = {}  # val/nll and the test metrics, once training has ended
    for epoch in range(epochs_done + 1, config.train.epochs + 1):
        t0 = time.perf_counter()
        row: dict[str, float] = {M.EPOCH: epoch}
        with timing.phase("train_epoch", epoch=epoch, examples=len(data.train)):
            row.update(
                train_epoch(
                    model,
                    optimizer,
                    batches,
                    config.train,
                    epoch,
                    generator=generator,
                    progress=progress,
                )
            )
        with timing.phase("validation", epoch=epoch, examples=len(data.val)):
            row.update(validation_terms(model, data, epoch))
        row[M.EPOCH_SECONDS] = time.perf_counter() - t0
        history.append(row)
        if ckpt_dir is not None:
            with files.interrupts_deferred():  # Ctrl-C: checkpoint and metrics.jsonl agree
                ckpt.save(
                    ckpt_dir,
                    ckpt.TrainingState(
                        epoch=epoch,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        generator=generator.get_state(),
                        config=to_dict(config),
                        history=history,
                        shape=model.shape,
                    ),
                )
                with open(out / METRICS_FILE, "a", encoding="utf-8") as f:  # type: ignore
                    f.write(json.dumps(row) + "\n")
        if epoch == config.train.epochs and final_eval:
            # The final metrics travel with the last epoch's report, so a scheduler that
            # stops trials at the last epoch still sees them.
            final = evaluate_final(model, data, config, out, epoch, started, eval_progress)
        if on_epoch is not None:
            on_epoch({**row, **final}, ckpt_dir)

    if final_eval and epochs_done >= config.train.epochs:
        # Resumed after its last epoch: the final metrics stored with the checkpoint (when
        # the evaluation settings are the same), else evaluated now; reported once more.
        final = _read_final(source, config, epochs_done) or {}
        if final:
            _write_final(final, config, out, epochs_done)
        else:
            final = evaluate_final(model, data, config, out, epochs_done, started, eval_progress)
        if on_epoch is not None and history:
            on_epoch({**history[-1], **final}, ckpt_dir)
    return FitResult(model=model, history=history, final=final)


def _resume(
    source: Path | None,
    config: RunConfig,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    ckpt_dir: Path | None,
    device: torch.device,
) -> list[dict[str, float]]:
    """Load the checkpoint in ``source`` (if any) into the run; returns its history."""
    if source is None or not ckpt.exists(source):
        return []
    state = ckpt.load(source, map_location=device)
    check_resumable(state.config, config, source)
    check_shape(state.shape, model.shape, source)
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    restore_generator(generator, state.generator, config.train.seed, state.epoch)
    if ckpt_dir is not None and source != ckpt_dir:
        # The output folder holds its own checkpoint from the start, so a run resumed
        # after its last epoch still has one to report and keep.
        ckpt.save(ckpt_dir, state)
    return [h for h in state.history if h[M.EPOCH] <= state.epoch]


def evaluate_final(
    model: VAE,
    data: Datasets,
    config: RunConfig,
    out: Path | None,
    epoch: int,
    started: float,
    progress: EvalProgressHook | None,
) -> dict[str, Any]:
    final = final_metrics(model, data, config, progress)
    for key in (*M.FINAL_VAL_SCALARS, *M.TEST_SCALARS):  # NaN: a diverged run, not a result
        if key in final and not math.isfinite(final[key]):
            raise TrainingDiverged(epoch, 0, final[key], what=key)
    # Seconds inside fit in this process: training, validation, final metrics.
    final[M.TOTAL_SECONDS] = time.perf_counter() - started
    _write_final(final, config, out, epoch)
    return final


def _write_final(final: dict[str, Any], config: RunConfig, out: Path | None, epoch: int) -> None:
    """final.json beside the run, and inside its checkpoint with the eval config used, so a
    run resumed after its last epoch reports the same numbers without evaluating again."""
    if out is None:
        return
    files.write_json(out / FINAL_FILE, {**final, M.EPOCH: epoch})
    if (out / CHECKPOINT_DIR).is_dir():
        files.write_json(
            out / CHECKPOINT_DIR / FINAL_FILE,
            {"epoch": epoch, "eval": to_dict(config.eval), "metrics": final},
        )


def _read_final(source: Path | None, config: RunConfig, epoch: int) -> dict[str, Any] | None:
    """The final metrics stored in a checkpoint folder, if made at ``epoch`` with the same
    evaluation settings; None otherwise (or if the file is damaged: evaluate again)."""
    path = None if source is None else Path(source) / FINAL_FILE
    if path is None or not path.is_file():
        return None
    try:
        stored = json.loads(files.read_bounded(path, files.MAX_RECORD_JSON_BYTES).decode("utf-8"))
    except (OSError, ValueError, CheckpointError):
        return None
    if stored.get("epoch") != epoch or stored.get("eval") != to_dict(config.eval):
        return None
    return dict(stored["metrics"])


def rewrite_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """metrics.jsonl as the checkpoint knows it (drops epochs a crash left unsaved)."""
    files.atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that fit did not make: fit would overwrite (or with --fresh
    delete) the files in it. Fit's own folder holds ``marker.MARKER_FILE`` of kind fit; one
    an older vae_study wrote (no marker) holds fit's files only, its ``config.yaml`` a run
    configuration (``_legacy_fit_folder``). A new or empty folder is fine."""
    marker.check_owned(
        out,
        marker.FIT,
        legacy=_legacy_fit_folder,
        fix="give a new or empty folder (--out DIR, out_dir in Python)",
    )


def clear_output_folder(out: Path) -> None:
    """Delete what is in fit's output folder ``out`` (``--fresh``), after the same check as
    ``check_output_folder``; ``out`` itself stays (it may be a link to a folder)."""
    import shutil

    check_output_folder(out)
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


FIT_FILES = frozenset({CONFIG_FILE, METRICS_FILE, FINAL_FILE, CHECKPOINT_DIR})


def _legacy_fit_folder(out: Path) -> bool:
    """Whether ``out`` (no marker) is a fit folder of a vae_study that did not mark them: it
    holds nothing but fit's files (and the temporary file of an atomic write cut short),
    and its ``config.yaml`` is a mapping of exactly the run sections, or its
    ``checkpoint/state.pt`` loads (a checkpoint copied alone)."""
    for p in out.iterdir():
        tmp = p.name.startswith(".") and p.name.endswith(".tmp")
        if p.name not in FIT_FILES and not tmp:
            return False
    config = out / CONFIG_FILE
    if config.is_file():
        try:
            return set(read_yaml(config)) == set(RUN_SECTIONS)
        except ConfigError:
            return False
    try:
        ckpt.load(out / CHECKPOINT_DIR)
    except CheckpointError:
        return False
    return True
