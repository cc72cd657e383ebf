"""One run's state: its model, Adam and training stream, what it has done, and its folder.

``fit`` trains one ``RunState``; ``fit_pack`` one per member, so a member is a run: the same
resume from its checkpoint, the same checkpoint and ``metrics.jsonl`` line after each epoch
(written together, Ctrl-C deferred), the same ``final.json``. A run's folder is fit's
output folder: ``config.yaml``, ``metrics.jsonl``, ``final.json``, ``checkpoint/`` and the
marker (``run_files``, ``marker``); a folder fit did not make is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vae_study import files, marker
from vae_study import metrics as M
from vae_study.config.run import RUN_SECTIONS, RunConfig, to_dict
from vae_study.config.yaml_file import read_yaml, write_yaml
from vae_study.core import checkpoint as ckpt
from vae_study.core.device import restore_generator
from vae_study.core.model import VAE
from vae_study.errors import CheckpointError, ConfigError, TrainingDiverged
from vae_study.run_files import CHECKPOINT_DIR, CONFIG_FILE, FINAL_FILE, METRICS_FILE


class RunState:
    """One run: what it trains (``model``, ``optimizer``, ``generator``: its training
    stream, seeded with ``train.seed`` on ``device``), what it has done (``history``, one row
    per epoch; ``final``, the final metrics; ``failed``, the divergence that stopped it) and
    where it writes (``out``, None: nothing is written; ``ckpt_dir``, its checkpoint).

    Its parameters may be views of a stacked model's rows while it trains in a pack; its
    checkpoint holds its own rows only, and ``leave_stack`` gives them their own memory
    again.
    """

    def __init__(
        self,
        config: RunConfig,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        out: Path | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.generator = torch.Generator(device).manual_seed(config.train.seed)
        self.out = out
        self.ckpt_dir = out / CHECKPOINT_DIR if out is not None else None
        self.source = self.ckpt_dir  # the checkpoint folder the run continues
        self.history: list[dict[str, float]] = []
        self.final: dict[str, Any] = {}
        self.failed: TrainingDiverged | None = None

    @property
    def epoch(self) -> int:
        """The last epoch trained (0: none yet)."""
        return int(self.history[-1][M.EPOCH]) if self.history else 0

    def resume(self, source: Path | None = None) -> None:
        """Continue the checkpoint in ``source`` (None: the run's own), if there is one,
        exactly: weights, optimizer, epoch and random stream; then write the folder's marker,
        ``config.yaml`` and ``metrics.jsonl`` as the checkpoint knows it (epochs a crash left
        unsaved dropped). A checkpoint from elsewhere is copied into the run's folder first,
        so a run resumed after its last epoch still has one to report and keep."""
        if source is not None:
            self.source = Path(source)
        if self.source is not None and ckpt.exists(self.source):
            state = ckpt.load(self.source, map_location=self.device)
            ckpt.check_resumable(state.config, self.config, self.source)
            ckpt.check_shape(state.shape, self.model.shape, self.source)
            self.model.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
            restore_generator(self.generator, state.generator, self.config.train.seed, state.epoch)
            if self.ckpt_dir is not None and self.source != self.ckpt_dir:
                ckpt.save(self.ckpt_dir, state)
            self.history = [h for h in state.history if h[M.EPOCH] <= state.epoch]
        if self.out is not None:
            marker.write(self.out, marker.FIT)  # also marks a folder an older vae_study wrote
            write_yaml(self.out / CONFIG_FILE, to_dict(self.config))
            rewrite_metrics(self.out / METRICS_FILE, self.history)

    def save_epoch(self, row: dict[str, float]) -> None:
        """The epoch just trained (``row``) joins the history; in a folder, its checkpoint
        and its ``metrics.jsonl`` line are written together (Ctrl-C waits for both)."""
        self.history.append(row)
        if self.ckpt_dir is None or self.out is None:
            return
        weights = self.model.state_dict()
        for key, value in weights.items():  # a view of a stack: save the run's row only
            if not _owns_storage(value):
                weights[key] = value.clone()
        with files.interrupts_deferred():
            ckpt.save(
                self.ckpt_dir,
                ckpt.TrainingState(
                    epoch=self.epoch,
                    model=weights,
                    optimizer=self.optimizer.state_dict(),
                    generator=self.generator.get_state(),
                    config=to_dict(self.config),
                    history=self.history,
                    shape=self.model.shape,
                ),
            )
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def leave_stack(self) -> None:
        """Parameters that are views of a stacked model's rows own their memory again."""
        for p in self.model.parameters():
            if not _owns_storage(p):
                p.data = p.data.clone()

    def write_final(self, final: dict[str, Any]) -> None:
        """The final metrics, kept in ``final`` and written to ``final.json`` beside the run
        and inside its checkpoint with the eval config used, so a run resumed after its last
        epoch reports the same numbers without evaluating again (``stored_final``)."""
        self.final = final
        if self.out is None:
            return
        files.write_json(self.out / FINAL_FILE, {**final, M.EPOCH: self.epoch})
        if (self.out / CHECKPOINT_DIR).is_dir():
            files.write_json(
                self.out / CHECKPOINT_DIR / FINAL_FILE,
                {"epoch": self.epoch, "eval": to_dict(self.config.eval), "metrics": final},
            )

    def stored_final(self) -> dict[str, Any] | None:
        """The final metrics stored in the checkpoint the run continued, if made at its last
        epoch with the same evaluation settings; None otherwise (or if the file is damaged:
        evaluate again)."""
        path = None if self.source is None else self.source / FINAL_FILE
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(
                files.read_bounded(path, files.MAX_RECORD_JSON_BYTES).decode("utf-8")
            )
        except (OSError, ValueError, CheckpointError):
            return None
        if stored.get("epoch") != self.epoch or stored.get("eval") != to_dict(self.config.eval):
            return None
        return dict(stored["metrics"])


def _owns_storage(t: torch.Tensor) -> bool:
    """Whether ``t`` is all of its storage (not a row of a stacked tensor)."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


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
