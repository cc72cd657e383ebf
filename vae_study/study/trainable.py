"""The trainable: one Ray Tune trial = one ``fit`` of the trial's configuration, or a pack of
members (its configurations x their seed replicates) trained as one batched model by
``fused.fit_pack``. Every member trains in its own fit folder in the study's record
(``record``, ``StudyLayout.record_dir``) and continues from the checkpoint there, whichever
Ray trial, driver or node trained it before."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from vae_study import metrics as M
from vae_study import timing
from vae_study.config.optuna_space import decode_params
from vae_study.config.run import RunConfig
from vae_study.config.schema import to_dict
from vae_study.config.study import StudyConfig
from vae_study.core.data import load_datasets, prepare
from vae_study.core.splits import Source
from vae_study.errors import TrainingDiverged, disk_full
from vae_study.records import record
from vae_study.records import results as R
from vae_study.records.replicates import replicate_seed
from vae_study.records.stage import Stage
from vae_study.study.trial_reports import PackReports, reportable


def train_trial(
    config: dict[str, Any], *, study: StudyConfig, source: Source, stage: Stage
) -> None:
    """Ray Tune function trainable: fit the trial's configuration, report every epoch.

    ``source`` is the dataset as read once by the driver (through Ray's object store); the
    trial presents it as its own ``data`` section says (train_subset, binarize), with the
    same validation and test examples as every other trial. ``stage``: the search or the
    confirmation, whose record holds each member's fit folder.

    Every member continues from its own checkpoint in the record, so a trial Ray restarts
    (a worker that died) or a configuration run again by a later driver loses at most the
    epoch in progress. A diverged member is recorded failed with its reason, reported once
    with ``diverged: 1``, and never trained again. Reports carry no Ray checkpoint: the
    record is the checkpoint.

    A trial of several members (``_pack`` configurations, ``search.replicates`` seeds each,
    see ``member_configs``) trains them with ``fused.fit_pack`` (``train_pack``).
    """
    import torch

    from vae_study.core.device import resolve_device

    trial_id = tune.get_context().get_trial_id()
    timing.bind(trial=trial_id)
    timing.event("trial_entered")
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial without a GPU share: hide
        # every GPU from it, or torch (and "auto") would use GPU 0 unasked and unaccounted.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    members = member_configs(config, study, gpu_ids, torch.cuda.is_available())
    ids = member_ids(config, study)
    run = members[0]
    device = run.train.device
    torch.set_num_threads(max(1, int(study.resources.cpus_per_trial)))
    # Presented straight onto the trial's device: on a GPU the run holds the device copy of
    # its splits only, no host copy beside it (the source stays in Ray's object store).
    with timing.phase("present"):
        data = prepare(
            source, run.data, dequantize=run.dequantized, device=resolve_device(run.train.device)
        )
    if timing.enabled():
        timing.event(
            "trial_config",
            members=[to_dict(m) for m in members],
            threads=torch.get_num_threads(),
            splits={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            shape=list(data.shape),
        )
    used = {
        M.TRAIN_EXAMPLES: len(data.train),
        M.TRAIN_NOISE: data.train_noise,
        R.DEVICE_KEY: device,
        R.GPU_IDS_KEY: ",".join(gpu_ids),
        R.NODE_KEY: ray.get_runtime_context().get_node_id(),
    }
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per checkpoint
    try:
        if len(members) > 1:
            per_config = len(members) // len(R.trial_configs(config))
            train_pack(members, per_config, data, stage, ids, used, trial_id)
        else:
            _train_one(run, data, stage, ids[0], used, trial_id)
    except OSError as exc:
        if not disk_full(exc):
            raise
        # Nothing more can be written: the driver is told (a report travels in memory),
        # stops the study, and leaves this configuration open for the next run.
        tune.report({R.DISK_FULL_KEY: str(exc.filename or stage.folder), **used})


def _train_one(
    run: RunConfig,
    data: Any,
    stage: Stage,
    ids: tuple[int, int],
    used: dict[str, Any],
    trial_id: str,
) -> None:
    """One member alone: ``fit`` in its folder of the record, a report per epoch."""
    (cid, r), out = ids, stage.layout.record_dir(*ids)
    before = record.read_member(stage, cid, r)
    if before.error:
        _report_failed(before, used)
        return
    record.clear_unstarted(stage, cid, r)
    clock = _Clock(stage, [ids])
    clock.start(trial_id, used, [before.epoch], None)

    from vae_study.core.train import fit

    def report(row: dict[str, Any], ckpt_dir: Path | None) -> None:
        _send(clock, [cid], {**reportable(row), **used})

    try:
        fit(run, out_dir=out, data=data, on_epoch=report)
    except TrainingDiverged as exc:
        record.update_info(stage.layout.record_file(cid, r), **{record.INFO_ERROR: str(exc)})
        clock.tick()
        tune.report({R.DIVERGED_KEY: 1, R.ERROR_KEY: str(exc), M.EPOCH: exc.epoch, **used})


class _Clock:
    """Each member's file in the record: its attempts (pid, first epoch), the Ray trial and
    node that train it, and the seconds its Ray trials have run, all attempts together."""

    def __init__(self, stage: Stage, ids: list[tuple[int, int]]) -> None:
        self.paths = [stage.layout.record_file(c, r) for c, r in ids]
        self.before = [float(record.read_info(p).get(record.INFO_WALL) or 0.0) for p in self.paths]
        self.t0 = time.monotonic()

    def start(
        self, trial_id: str, used: dict[str, Any], epochs: list[int], fusion: str | None
    ) -> None:
        for j, (path, epoch) in enumerate(zip(self.paths, epochs, strict=True)):
            fields = {record.INFO_TRIAL: trial_id, R.MEMBER_KEY: j, **used}
            if fusion is not None:
                fields[R.FUSION_KEY] = fusion
            record.add_attempt(path, os.getpid(), epoch, **fields)

    def tick(self, which: list[int] | None = None) -> None:
        elapsed = time.monotonic() - self.t0
        for j in range(len(self.paths)) if which is None else which:
            record.update_info(self.paths[j], **{record.INFO_WALL: self.before[j] + elapsed})


def _report_failed(member: record.Member, used: dict[str, Any]) -> None:
    """A member the record holds as failed: reported once as diverged, not trained again."""
    tune.report({R.DIVERGED_KEY: 1, R.ERROR_KEY: member.error, M.EPOCH: member.epoch, **used})


def member_ids(config: dict[str, Any], study: StudyConfig) -> list[tuple[int, int]]:
    """(configuration id, replicate) of each member of the trial, in member order."""
    replicates = int(config.get(R.TRIAL_REPLICATES_KEY, study.search.replicates))
    return [(int(cid), r) for _, cid, _ in R.trial_configs(config) for r in range(replicates)]


def member_configs(
    config: dict[str, Any], study: StudyConfig, gpu_ids: list[str], cuda_available: bool
) -> list[RunConfig]:
    """The run configuration of each member of the trial: its configurations (``_pack``, or
    the flat config) times their replicates (``_replicates``, else ``search.replicates``),
    configuration-major. Replicate r gets ``replicate_seed(train.seed, r, _seed_offset)``:
    the same seeds in every configuration. One member with no offset is today's trial."""
    replicates = int(config.get(R.TRIAL_REPLICATES_KEY, study.search.replicates))
    offset = int(config.get(R.SEED_OFFSET_KEY, 0))
    members = []
    for encoded, _, _ in R.trial_configs(config):
        params = decode_params(study.search.space, encoded)
        base = study.trial_config(params)
        device = trial_device(base.train.device, gpu_ids, cuda_available)
        for r in range(replicates):
            seed = replicate_seed(base.train.seed, r, offset)
            members.append(
                study.trial_config({**params, "train.device": device, "train.seed": seed})
            )
    return members


def train_pack(
    members: list[RunConfig],
    per_config: int,
    data: Any,
    stage: Stage,
    ids: list[tuple[int, int]],
    used: dict[str, Any],
    trial_id: str,
) -> None:
    """Train the members as one pack and report once per epoch, when every live member has
    finished it: each member's metrics as ``member_<j>/...`` and each configuration's
    replicate means (``trial_reports.PackReports``). Member j trains in the record's folder
    of ``ids[j]`` and continues from its checkpoint there.

    A member that diverges is masked by ``fit_pack``, reported ``member_<j>/diverged`` and
    recorded failed with its reason (so a later run does not train it again); its
    configuration gets no objective. The last epoch is reported when ``fit_pack`` returns: a
    final evaluation may still diverge.
    """
    from vae_study.core.fused import SEQUENTIAL, fit_pack, fusion_mode

    if data is None:  # as fit_pack would: the members' data section, read here
        first = members[0]
        data = load_datasets(first.data, dequantize=first.dequantized)
    # Which way the members train (stacked, vmap, sequential), in every report and row.
    mode = fusion_mode(members, data.shape)[0]
    used = {**used, R.FUSION_KEY: mode}
    before = [record.read_member(stage, c, r) for c, r in ids]
    failed = {j: m.error for j, m in enumerate(before) if m.error}
    for j, ids_j in enumerate(ids):
        if j not in failed:
            record.clear_unstarted(stage, *ids_j)
    clock = _Clock(stage, ids)
    clock.start(trial_id, used, [m.epoch for m in before], mode)
    reports = PackReports(
        [stage.layout.record_dir(c, r) for c, r in ids],
        per_config,
        members[0].train.epochs,
        failed=failed,
        sequential=mode == SEQUENTIAL,
        used=used,
        send=functools.partial(_send, clock, sorted({c for c, _ in ids})),
    )
    results = fit_pack(
        [members[j] for j in reports.live],
        out_dirs=[reports.outs[j] for j in reports.live],
        data=data,
        on_epoch=reports.on_epoch,
    )
    for j, reason in reports.diverged(results).items():
        record.update_info(stage.layout.record_file(*ids[j]), **{record.INFO_ERROR: reason})
    reports.finish()


def _send(clock: _Clock, config_ids: list[int], result: dict[str, Any]) -> None:
    """One report of the trial's configurations ``config_ids`` to Ray Tune, after the
    members' clocks; then the tests' hold point at its epoch."""
    clock.tick()
    with timing.phase("report"):
        tune.report(result)
    hold_point(config_ids, int(result[M.EPOCH]))


# A deterministic pause for tests: with ``HOLD_ENV`` naming a file, a trial that has just
# reported an epoch waits while that file exists and holds ``{"epoch": n}`` with n at most
# the epoch reported (and, with ``"configs": [...]``, one of the trial's configuration ids
# listed). A test holds a trial exactly where it wants to inject a fault, then deletes the
# file (or kills the trial): no race against a trial that finishes first.
HOLD_ENV = "VAE_STUDY_HOLD"
HOLD_POLL_S = 0.05


def hold_point(config_ids: list[int], epoch: int) -> None:
    """Wait here while ``HOLD_ENV``'s file asks to hold this trial at ``epoch`` (tests only)."""
    path = os.environ.get(HOLD_ENV)
    if not path:
        return
    while True:
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # no file (released), or not a hold
            return
        configs = spec.get("configs")
        if epoch < int(spec["epoch"]) or (
            configs is not None and not set(config_ids) & {int(c) for c in configs}
        ):
            return
        time.sleep(HOLD_POLL_S)


def trial_device(device: str, gpu_ids: list[str], cuda_available: bool) -> str:
    """The ``train.device`` a trial runs with, from its study's and the GPUs Ray gave it.

    Without a GPU share a trial runs on the CPU (``auto`` included); asking for ``cuda`` without
    one is refused before the study starts (``study_config``). With a share the trial sees its
    GPU, whatever its number on the machine, as ``cuda:0``: ``auto`` and ``cuda`` are that GPU.
    A node that advertises GPUs to Ray while torch sees none (no driver) runs ``auto`` on the
    CPU; an explicit ``cuda`` there fails in ``fit`` with a message naming what it sees.
    """
    if not gpu_ids:
        return "cpu"
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device
