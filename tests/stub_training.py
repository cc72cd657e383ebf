"""Training with synthetic numbers, in milliseconds, for the study layer's tests
(``stub_tune``): ``stub_fit`` and ``stub_fit_pack`` stand for ``train.fit`` and
``fused.fit_pack``.

A member's fit folder is written as ``fit`` writes it: ``config.yaml``, then per epoch
``checkpoint/state.pt`` (written atomically; here JSON of the epoch and the history) and a
line of ``metrics.jsonl``, and ``final.json`` after the last epoch; a member continues from
its checkpoint, and one resumed after its last epoch reports its final metrics once more.
Its numbers are ``synthetic_epoch`` and ``synthetic_final``: smooth in beta, latent size and
epoch, and apart by seed. ``diverge(config)`` names the epoch a member diverges at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vae_study import files, marker
from vae_study import metrics as M
from vae_study.config.run import RunConfig
from vae_study.config.schema import to_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.errors import TrainingDiverged
from vae_study.run_files import CHECKPOINT_DIR, CONFIG_FILE, FINAL_FILE, METRICS_FILE, STATE_FILE

Diverge = Callable[[RunConfig], "int | None"]


def never(config: RunConfig) -> int | None:
    return None


def synthetic_epoch(config: RunConfig, epoch: int) -> dict[str, float]:
    """A member's metrics after ``epoch``: smooth in beta, latent size and epoch, and apart
    by seed, so a mean over replicates is none of them."""
    t = config.train
    rate = 8.0 * config.model.latent_dim / (4.0 + t.beta)
    distortion = 60.0 + 40.0 / epoch + 2.0 * t.beta + 0.25 * t.seed
    return {
        M.EPOCH: epoch,
        M.TRAIN_LOSS: distortion + 1.0 + t.beta * rate,
        M.TRAIN_RATE: rate,
        M.TRAIN_DISTORTION: distortion + 1.0,
        M.VAL_NEG_ELBO: rate + distortion,
        M.VAL_RATE: rate,
        M.VAL_DISTORTION: distortion,
        M.EPOCH_SECONDS: 0.001,
    }


def synthetic_final(config: RunConfig) -> dict[str, Any]:
    """A member's final metrics (what ``fit`` evaluates after its last epoch)."""
    last = synthetic_epoch(config, config.train.epochs)
    q = config.quantity
    latent = config.model.latent_dim
    rate, neg_elbo = last[M.VAL_RATE], last[M.VAL_NEG_ELBO]
    return {
        M.bound_key("val", q): neg_elbo - 2.0,
        M.TEST_NEG_ELBO: neg_elbo + 1.0,
        M.TEST_RATE: rate,
        M.TEST_DISTORTION: last[M.VAL_DISTORTION] + 1.0,
        M.bound_key("test", q): neg_elbo - 1.0,
        M.TEST_BOUND_GAP: 2.0,
        M.TEST_NLL_EXAMPLES: 100,
        M.TEST_ACTIVE_UNITS: latent,
        M.TEST_MUTUAL_INFO: min(rate, 3.0),
        M.TEST_MARGINAL_KL: rate - min(rate, 3.0),
        M.TEST_KL_PER_DIM: [rate / latent] * latent,
        M.TOTAL_SECONDS: 0.01,
    }


class StubRun:
    """One member's fit folder ``out`` (None: nothing written), trained an epoch at a time
    with synthetic numbers; continues from its checkpoint as ``fit`` does."""

    def __init__(self, config: RunConfig, out: Path | None, diverge: Diverge = never) -> None:
        from vae_study.core.run_state import check_output_folder, rewrite_metrics

        self.config, self.out, self.diverge = config, out, diverge
        self.history: list[dict[str, Any]] = []
        self.final: dict[str, Any] = {}
        if out is None:
            return
        check_output_folder(out)
        state = out / CHECKPOINT_DIR / STATE_FILE
        if state.is_file():
            saved = json.loads(state.read_text(encoding="utf-8"))
            self.history = [h for h in saved["history"] if h[M.EPOCH] <= saved["epoch"]]
        marker.write(out, marker.FIT)
        write_yaml(out / CONFIG_FILE, to_dict(config))
        rewrite_metrics(out / METRICS_FILE, self.history)

    @property
    def epoch(self) -> int:
        return int(self.history[-1][M.EPOCH]) if self.history else 0

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.train.epochs

    @property
    def ckpt_dir(self) -> Path | None:
        return None if self.out is None else self.out / CHECKPOINT_DIR

    def step(self) -> dict[str, Any]:
        """The next epoch: its checkpoint and metrics line, then (the last epoch) final.json;
        returns what ``fit`` hands ``on_epoch``. A divergence raises before any file."""
        epoch = self.epoch + 1
        if self.diverge(self.config) == epoch:
            raise TrainingDiverged(epoch, 3, math.nan)
        row = synthetic_epoch(self.config, epoch)
        self.history.append(row)
        if self.out is not None:
            files.atomic_write_text(
                self.out / CHECKPOINT_DIR / STATE_FILE,
                json.dumps({"epoch": epoch, "history": self.history}),
            )
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if self.done:
            self.finish()
        return {**row, **self.final}

    def finish(self) -> dict[str, Any]:
        """The final metrics: those final.json holds (a member resumed after its last epoch),
        else evaluated now and written."""
        path = None if self.out is None else self.out / FINAL_FILE
        if path is not None and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.final = {k: v for k, v in saved.items() if k != M.EPOCH}
        else:
            self.final = synthetic_final(self.config)
            if path is not None:
                files.write_json(path, {**self.final, M.EPOCH: self.epoch})
        return self.final

    def result(self) -> Any:
        from vae_study.core.train import FitResult

        return FitResult(model=None, history=self.history, final=self.final)


def stub_fit(
    config: RunConfig,
    *,
    out_dir: str | Path | None = None,
    data: Any = None,
    on_epoch: Callable[[dict[str, Any], Path | None], None] | None = None,
    diverge: Diverge = never,
    **ignored: Any,
) -> Any:
    """``train.fit`` with synthetic numbers (see ``StubRun``)."""
    run = StubRun(config, None if out_dir is None else Path(out_dir), diverge)
    if run.done:  # resumed after its last epoch: the final metrics, reported once more
        run.finish()
        if on_epoch is not None and run.history:
            on_epoch({**run.history[-1], **run.final}, run.ckpt_dir)
        return run.result()
    while not run.done:
        row = run.step()
        if on_epoch is not None:
            on_epoch(row, run.ckpt_dir)
    return run.result()


def stub_fit_pack(
    configs: list[RunConfig],
    *,
    out_dirs: list[str | Path] | None = None,
    data: Any = None,
    on_epoch: Callable[[int, dict[str, Any], Path | None], None] | None = None,
    diverge: Diverge = never,
    **ignored: Any,
) -> list[Any]:
    """``fused.fit_pack`` with synthetic numbers: every member trains its next epoch, then
    every hook of that epoch runs, member by member; a member that diverges gets its
    ``TrainingDiverged`` in its slot while the others go on."""
    outs = [None] * len(configs) if out_dirs is None else [Path(d) for d in out_dirs]
    runs = [StubRun(c, o, diverge) for c, o in zip(configs, outs, strict=True)]
    results: list[Any] = [None] * len(runs)
    for j, run in enumerate(runs):
        if run.done:
            results[j] = stub_fit(run.config, out_dir=run.out, on_epoch=_member_hook(on_epoch, j),
                                  diverge=diverge)  # fmt: skip
    training = [j for j in range(len(runs)) if results[j] is None]
    while training:
        rows: dict[int, dict[str, Any]] = {}
        for j in training:
            try:
                rows[j] = runs[j].step()
            except TrainingDiverged as exc:
                results[j] = exc
        for j in training:
            if j in rows and on_epoch is not None:
                on_epoch(j, rows[j], runs[j].ckpt_dir)
        for j in training:
            if results[j] is None and runs[j].done:
                results[j] = runs[j].result()
        training = [j for j in training if results[j] is None]
    return results


def _member_hook(on_epoch: Any, j: int) -> Any:
    return None if on_epoch is None else (lambda row, folder: on_epoch(j, row, folder))
