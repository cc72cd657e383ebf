"""The trainable: one Ray Tune trial = one ``fit`` of the trial's configuration, or a pack of
members (its configurations x their seed replicates) trained as one batched model by
``fused.fit_pack``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from . import metrics as M
from . import results as R
from .config import RunConfig
from .data import Source, load_datasets, prepare
from .errors import TrainingDiverged
from .layout import member_dirname
from .replicates import replicate_seed
from .search import decode_params
from .study_config import StudyConfig

PACK_FILE = "pack.json"  # in a pack's checkpoint: the members that diverged, with the reason


def train_trial(config: dict[str, Any], *, study: StudyConfig, source: Source) -> None:
    """Ray Tune function trainable: fit the trial's configuration, report every epoch.

    ``source`` is the dataset as read once by the driver (through Ray's object store); the
    trial presents it as its own ``data`` section says (train_subset, binarize), with the
    same validation and test examples as every other trial.

    Resumes from ``tune.get_checkpoint()`` when Ray restarts the trial. A diverged run is
    reported once with ``diverged: 1`` and ends normally, so Ray does not retry a
    deterministic failure and the searcher records it as failed.

    A trial of several members (``_pack`` configurations, ``search.replicates`` seeds each,
    see ``member_configs``) trains them with ``fused.fit_pack`` (``train_pack``).
    """
    import torch

    from .train import fit, resolve_device

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if not gpu_ids:
        # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial without a GPU share: hide
        # every GPU from it, or torch (and "auto") would use GPU 0 unasked and unaccounted.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    members = member_configs(config, study, gpu_ids, torch.cuda.is_available())
    run = members[0]
    device = run.train.device
    torch.set_num_threads(max(1, int(study.resources.cpus_per_trial)))
    # Presented straight onto the trial's device: on a GPU the run holds the device copy of
    # its splits only, no host copy beside it (the source stays in Ray's object store).
    data = prepare(
        source, run.data, dequantize=run.dequantized, device=resolve_device(run.train.device)
    )
    used = {
        M.TRAIN_EXAMPLES: len(data.train),
        M.TRAIN_NOISE: data.train_noise,
        R.DEVICE_KEY: device,
        R.GPU_IDS_KEY: ",".join(gpu_ids),
    }
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per checkpoint
    work = Path(tempfile.mkdtemp(prefix="vae_study_trial_"))
    restored = tune.get_checkpoint()

    node = ray.get_runtime_context().get_node_id()
    if len(members) > 1:
        per_config = len(members) // len(R.trial_configs(config))
        try:
            train_pack(members, per_config, data, work, restored, {**used, R.NODE_KEY: node})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    def report(row: dict[str, Any], ckpt_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**_reportable(row), **used, R.NODE_KEY: node}, checkpoint=checkpoint)

    try:
        if restored is not None:
            with restored.as_directory() as folder:
                resume = work / "restored"
                shutil.copytree(folder, resume)
            fit(run, out_dir=work / "run", resume_from=resume, data=data, on_epoch=report)
        else:
            fit(run, out_dir=work / "run", data=data, on_epoch=report)
    except TrainingDiverged as exc:
        tune.report(
            {R.DIVERGED_KEY: 1, R.ERROR_KEY: str(exc), M.EPOCH: exc.epoch, R.NODE_KEY: node}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    work: Path,
    restored: Any,
    used: dict[str, Any],
) -> None:
    """Train the members as one pack and report once per epoch, when every live member has
    finished it: each member's metrics as ``member_<j>/...``, each configuration's replicate
    means (``config_summary``) and ONE checkpoint, the folder of every member's fit folder.

    A member that diverges is masked by ``fit_pack`` and reported ``member_<j>/diverged``
    (its reason once ``fit_pack`` returns, and in ``pack.json`` of the last checkpoint, so a
    restored trial does not train it again); its configuration gets no objective. The last
    epoch is reported when ``fit_pack`` returns: a final evaluation may still diverge.
    """
    from .fused import SEQUENTIAL, fit_pack, fusion_mode

    if data is None:  # as fit_pack would: the members' data section, read here
        first = members[0]
        data = load_datasets(first.data, dequantize=first.dequantized)
    # Which way the members train (stacked, vmap, sequential), in every report and row.
    mode = fusion_mode(members, data.shape)[0]
    sequential = mode == SEQUENTIAL
    used = {**used, R.FUSION_KEY: mode}

    pack = work / "pack"
    if restored is not None:
        with restored.as_directory() as folder:
            shutil.copytree(folder, pack)
    pack.mkdir(parents=True, exist_ok=True)
    outs = [pack / member_dirname(j) for j in range(len(members))]
    failed: dict[int, str] = _read_failed(pack / PACK_FILE)
    live = [j for j in range(len(members)) if j not in failed]
    rows: dict[int, dict[str, Any]] = {}  # member -> its latest row (an epoch, then final)
    epochs = members[0].train.epochs
    state = {"reported": 0}

    def report(epoch: int) -> None:
        n_configs = len(members) // per_config
        result = {M.EPOCH: epoch, **used}
        for j in range(len(members)):
            row = rows.get(j)
            if row is not None:
                result.update({R.member_key(j, k): v for k, v in _reportable(row).items()})
            if j in failed or j not in live:
                result[R.member_key(j, R.DIVERGED_KEY)] = 1
                if j in failed:
                    result[R.member_key(j, R.ERROR_KEY)] = failed[j]
        for i in range(n_configs):
            group = range(i * per_config, (i + 1) * per_config)
            summary: dict[str, Any] = {}  # no mean while a replicate is not at this epoch:
            if not any(off_epoch(j, epoch) for j in group):  # (sequential) or masked
                summary = config_summary([R.sub_result(result, R.member_key(j, "")) for j in group])
            if n_configs == 1:
                result.update(summary)
            else:
                result.update({R.config_key(i, k): v for k, v in summary.items()})
        state["reported"] = epoch
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(pack)))

    def off_epoch(j: int, epoch: int) -> bool:
        """A live member not at ``epoch``: not trained that far yet, or already past it
        (members that train one after another), or masked after diverging (its reason comes
        when fit_pack returns). A mean over replicates is taken at one epoch only."""
        row = rows.get(j)
        return j in live and j not in failed and (row is None or int(row[M.EPOCH]) != epoch)

    def on_epoch(k: int, row: dict[str, Any], folder: Path | None) -> None:
        j = live[k]
        rows[j] = row
        epoch = int(row[M.EPOCH])
        if sequential:  # one member at a time: every member epoch reported, with its checkpoint
            report(min(int(rows[m][M.EPOCH]) if m in rows else 0 for m in live))
            return
        if epoch >= epochs or epoch <= state["reported"]:
            return  # the last epoch is reported when fit_pack returns; a lagging member waits
        # Members are called in order; a later one that wrote this epoch will be called too.
        if not any(_last_epoch(outs[m]) == epoch for m in live[k + 1 :]):
            report(epoch)

    results = fit_pack(
        [members[j] for j in live], out_dirs=[outs[j] for j in live], data=data, on_epoch=on_epoch
    )
    last = state["reported"]
    for j, res in zip(live, results, strict=True):
        if isinstance(res, TrainingDiverged):
            failed[j] = str(res)
            rows.setdefault(j, {M.EPOCH: res.epoch - 1})
        elif res.history:
            rows[j] = {**res.history[-1], **res.final}
        last = max(last, int(rows[j][M.EPOCH]))
    _write_failed(pack / PACK_FILE, failed)
    report(last)


def config_summary(member_results: list[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's report from its members' (replicates') reports: ``diverged`` and the
    first reason if one diverged (then no metric: the configuration has no objective), else
    the mean of each number every replicate reports."""
    bad = [r for r in member_results if r.get(R.DIVERGED_KEY)]
    if bad:
        reason = next((r[R.ERROR_KEY] for r in bad if r.get(R.ERROR_KEY)), None)
        return {R.DIVERGED_KEY: 1, **({R.ERROR_KEY: reason} if reason else {})}
    out: dict[str, Any] = {}
    for key in member_results[0]:
        values = [r.get(key) for r in member_results]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = sum(values) / len(values)
    return out


def _last_epoch(out: Path) -> int:
    """The last epoch in a member's metrics.jsonl (0: none): written with its checkpoint."""
    from .train import METRICS_FILE

    try:
        lines = (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        return int(json.loads(lines[-1])[M.EPOCH]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _read_failed(path: Path) -> dict[int, str]:
    try:
        return {int(j): str(why) for j, why in json.loads(path.read_text("utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_failed(path: Path, failed: dict[int, str]) -> None:
    from .checkpoint import write_json

    write_json(path, {str(j): why for j, why in sorted(failed.items())})


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


def _reportable(row: dict[str, Any]) -> dict[str, Any]:
    """Ray wants flat scalars; the per-dimension KL list travels as text."""
    out = {}
    for k, v in row.items():
        out[k] = " ".join(f"{x:.5g}" for x in v) if isinstance(v, list) else v
    return out
