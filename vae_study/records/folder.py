"""The study folder without Ray: reading it (the resolved study, its trials, their
histories) and preparing it for a driver (checked, locked). Its names are in ``layout``.

Reading works on a study that is finished, still running or interrupted: it reads only files
(``study.yaml``, ``results.csv``, the members' fit folders in ``trials/``; in a folder of an
older vae_study, Ray's ``tune/trial_*/result.json`` and checkpoints).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_study import marker
from vae_study import metrics as M
from vae_study.config.study import StudyConfig, study_from_dict
from vae_study.config.yaml_file import read_yaml, write_yaml
from vae_study.errors import StudyError, VaeStudyError
from vae_study.files import MAX_RECORD_LINES_BYTES, read_bounded
from vae_study.records import results as R
from vae_study.records.layout import StudyLayout, holds_state
from vae_study.records.replicates import MEMBER_KEY


@dataclass
class Trial:
    """One trial as the report sees it."""

    trial_id: str
    status: str
    params: dict[str, Any]  # every run key that matters, searched or not
    metrics: dict[str, Any]  # the results.csv row
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch
    checkpoint: Path | None = None
    pareto: bool = False
    # A configuration (``StudyFolder.configs``): ``metrics`` holds the means over its
    # completed replicates, ``se`` their standard errors (None with fewer than 2), ``n_seeds``
    # how many replicates finished of ``n_replicates``, ``members`` the replicates' rows.
    # A results.csv row (a member) keeps the defaults: one seed, no standard error.
    se: dict[str, float | None] = field(default_factory=dict)
    n_seeds: int = 1
    n_replicates: int = 1
    members: list[Trial] = field(default_factory=list)

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return math.nan
        return v

    def error(self, key: str) -> float | None:
        """The standard error of ``key`` over the replicates; None when there is none (one
        replicate, or a results.csv row), never 0 in its place."""
        v = self.se.get(key)
        try:
            v = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None

    @property
    def finished(self) -> bool:
        return self.status == R.COMPLETED

    @property
    def beta(self) -> float:
        return float(self.params["train.beta"])

    @property
    def latent_dim(self) -> int:
        return int(self.params["model.latent_dim"])

    @property
    def k(self) -> int:
        return int(self.params["train.k"])

    @property
    def objective(self) -> str:
        return str(self.params["train.objective"])

    @property
    def kl_per_dim(self) -> list[float]:
        return R.parse_kl_per_dim(self.metrics.get(M.TEST_KL_PER_DIM))


@dataclass
class StudyFolder:
    """A study folder as the report reads it: ``trials`` are results.csv's rows (one per
    member: a seed of a configuration), ``configs`` one per configuration with the means
    and standard errors over its replicates (the same objects as ``trials`` for a study of
    one seed per configuration, without a config_id column), ``confirmed`` the confirmation
    stage's configurations (``confirm/``; empty without one) and ``confirm_trials`` its
    members."""

    folder: Path
    study: StudyConfig
    trials: list[Trial]
    configs: list[Trial] = None  # type: ignore[assignment]  # None: made from ``trials``
    confirmed: list[Trial] = field(default_factory=list)
    confirm_trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.configs is None:
            self.configs = configurations(
                self.trials,
                self.study,
                replicates=self.study.search.replicates,
                objectives=[(o.metric, o.mode) for o in self.study.search.objectives],
            )


def load_folder(folder: str | Path) -> StudyFolder:
    """Read a study folder; a folder that is not one is a clear ``VaeStudyError``."""
    layout = StudyLayout(folder)
    folder = layout.folder
    if os.path.lexists(layout.study_file) and not layout.study_file.is_file():
        raise VaeStudyError(
            f"{layout.study_file} is not a regular file; give the folder 'vae_study run' made"
        )
    if not layout.study_file.is_file():
        raise VaeStudyError(
            f"{folder} is not a study folder (no {layout.study_file.name}); "
            "give the folder 'vae_study run' made, such as runs/beta_sweep"
        )
    study = study_from_dict(read_yaml(layout.study_file))
    trials = _read_trials(folder, study)
    confirmed: list[Trial] = []
    confirm_trials: list[Trial] = []
    confirm = study.search.confirm
    if confirm is not None:
        confirm_trials = _read_trials(layout.confirm_dir, study)
        confirmed = configurations(confirm_trials, study, replicates=confirm.replicates)
    return StudyFolder(folder, study, trials, None, confirmed, confirm_trials)


def _read_trials(folder: Path, study: StudyConfig) -> list[Trial]:
    table_path = StudyLayout(folder).results_file
    if not table_path.is_file():
        return []
    return [_trial(folder, study, row) for row in R.read_results(table_path).to_dict("records")]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# The numbers a configuration averages over its replicates: every scalar of a results row.
AGGREGATED = tuple(m for m in R.ROW_METRICS if m != M.TEST_KL_PER_DIM)


def configurations(
    trials: list[Trial],
    study: StudyConfig,
    *,
    replicates: int,
    objectives: Sequence[tuple[str, str]] = (),
) -> list[Trial]:
    """One Trial per configuration from its members (results.csv rows grouped by config_id;
    by trial_id in a table without that column, one member each), with the means and
    standard errors of ``replicates.aggregate``; ``pareto`` set on the front of the means
    of ``objectives`` among completed configurations. The configuration's history,
    checkpoint and per-dimension KL are its lowest replicate's (replicate 0 when it is
    there): the model pictures show one member, not an average of weights."""
    from vae_study.records.pareto import pareto_front
    from vae_study.records.replicates import (
        CONFIG_KEY,
        N_FINISHED_KEY,
        N_REPLICATES_KEY,
        REPLICATE_KEY,
        aggregate,
        se_key,
    )

    groups: dict[Any, list[Trial]] = {}
    for t in trials:
        cid = t.metrics.get(CONFIG_KEY)
        key = ("config", int(float(cid))) if _present(cid) else ("trial", t.trial_id)
        groups.setdefault(key, []).append(t)
    param_keys = [p.key for p in study.search.space]
    out = []
    for (kind, ident), members in groups.items():
        (agg,) = aggregate(
            [{**m.metrics, "trial_id": m.trial_id, "status": m.status} for m in members],
            param_keys=param_keys,
            metrics=list(AGGREGATED),
            replicates=max(replicates, len(members)),  # a table of more seeds than said
        )

        def order(m: Trial) -> tuple[bool, float]:
            r = m.value(REPLICATE_KEY)
            return (not m.finished, r if math.isfinite(r) else 0.0)

        members = sorted(members, key=order)
        first = members[0]
        failed = [m for m in members if m.status == R.FAILED]
        shown = failed[0] if agg.get("status") == R.FAILED and failed else first
        metrics = dict(shown.metrics)
        if agg["status"] in (R.COMPLETED, R.FAILED) or agg[N_FINISHED_KEY] > 0:
            # The means over all its seeds; none for a configuration short of one (failed,
            # or some seeds finished and others not): never the survivors' mean.
            metrics.update({m: agg.get(m) for m in AGGREGATED})
        # else (no seed finished): the member's own numbers, a stopped or running trial's last
        metrics[M.TEST_KL_PER_DIM] = first.metrics.get(M.TEST_KL_PER_DIM)
        status = str(agg["status"])
        if kind == "trial":  # a row of its own (a table without config_id): its own word
            status = first.status
        elif status not in (R.FAILED, R.COMPLETED) and any(
            m.status == R.INTERRUPTED for m in members
        ):
            status = R.INTERRUPTED  # paused with the study: the next run resumes it
        out.append(
            Trial(
                trial_id=str(ident) if kind == "config" else first.trial_id,
                status=status,
                params=first.params,
                metrics=metrics,
                history=first.history,
                checkpoint=first.checkpoint,
                pareto=first.pareto if kind == "trial" and not objectives else False,
                se={m: agg.get(se_key(m)) for m in AGGREGATED},
                n_seeds=int(agg[N_FINISHED_KEY]),
                n_replicates=int(agg[N_REPLICATES_KEY]),
                members=members,
            )
        )
    if objectives:
        done = [i for i, c in enumerate(out) if c.finished]
        points = [[out[i].value(m) for m, _ in objectives] for i in done]
        for j in pareto_front(points, [mode for _, mode in objectives]):
            out[done[j]].pareto = True
    return out


def _trial(folder: Path, study: StudyConfig, row: dict[str, Any]) -> Trial:
    base = {
        "train.beta": study.base.train.beta,
        "model.latent_dim": study.base.model.latent_dim,
        "train.k": study.base.train.k,
        "train.objective": study.base.train.objective,
    }
    params = dict(base)
    for p in study.search.space:
        value = row.get(p.key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            params[p.key] = value
    trial_id = str(row["trial_id"])
    layout = StudyLayout(folder)
    member = _member(row)
    history = _record_history(layout, row)
    if history is None:  # a folder of an older vae_study: Ray's per-trial reports
        history = read_history(layout.result_file(trial_id), member)
    return Trial(
        trial_id=trial_id,
        status=str(row["status"]),
        params=params,
        metrics=row,
        history=history,
        checkpoint=find_checkpoint(layout, trial_id, row.get("checkpoint"), member),
        pareto=str(row.get("pareto")) == "True",
    )


def _record_history(layout: StudyLayout, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The member's epochs from its fit folder in the record (None: it has none there)."""
    from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY
    from vae_study.run_files import METRICS_FILE

    try:
        config, replicate = int(row[CONFIG_KEY]), int(row[REPLICATE_KEY])
    except (KeyError, TypeError, ValueError):
        return None
    path = layout.record_dir(config, replicate) / METRICS_FILE
    if not path.is_file():
        return None
    return read_history(path)


def _member(row: dict[str, Any]) -> int | None:
    """The row's member in its trial (None: a table from before members existed)."""
    try:
        return int(row.get(MEMBER_KEY))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_history(path: Path, member: int | None = None) -> list[dict[str, Any]]:
    """Per-epoch rows of a JSON-lines file (a member's metrics.jsonl, or an older study's
    Ray result.json); a torn last line (a crash) is skipped. ``member``: that member's
    reports (``member_<j>/...``) in a Ray result.json of a trial of several members."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = read_bounded(path, MAX_RECORD_LINES_BYTES).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and member is not None and R.member_key(member, M.EPOCH) in r:
            r = {**r, **R.sub_result(r, R.member_key(member, ""))}  # the member's, not the mean
        if isinstance(r, dict) and M.VAL_NEG_ELBO in r and M.EPOCH in r:
            rows[int(r[M.EPOCH])] = r  # a resumed trial may repeat an epoch: keep the last
    return [rows[e] for e in sorted(rows)]


def find_checkpoint(
    layout: StudyLayout, trial_id: str, recorded: Any, member: int | None = None
) -> Path | None:
    """The trial's (or its member's) checkpoint folder: the one results.csv records
    (``recorded``) if it still holds a model state, else the latest one left in the trial's
    folder (a pack's: the member's folder in it), else None."""
    if isinstance(recorded, str) and holds_state(Path(recorded)):
        return Path(recorded)
    found = layout.member_checkpoints(trial_id, member) if member is not None else []
    found = found or layout.checkpoints(trial_id)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------
# Preparing the folder for a driver, and the lock that keeps it to one driver.


def prepare_folder(study: StudyConfig, *, fresh: bool) -> tuple[Path, bool]:
    """Create or check the study folder and lock it for this driver (``release_folder``
    unlocks it); returns (folder, whether it is a resume).

    A folder made by a study with another search space or base config is refused, and so is
    a folder another driver is running (see ``lock_folder``).
    """
    out_root = Path(study.output.dir).expanduser()
    layout = StudyLayout.of(out_root, study.name)
    folder = layout.folder
    resolved_root = out_root.resolve()
    if folder.is_symlink() or (folder.exists() and resolved_root not in folder.resolve().parents):
        raise StudyError(
            f"the study folder {folder} points outside output.dir "
            f"({out_root}); refusing to write there"
        )
    marker.check_owned(  # a folder of the user's is never written into, nor deleted
        folder,
        marker.STUDY,
        legacy=_legacy_study_folder,
        fix="choose another name (--set name=...) or output.dir",
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(
            f"cannot write the study folder {folder}: {exc.strerror}; choose another output.dir"
        ) from None
    lock_folder(folder)  # before anything in it is deleted or written
    try:
        marker.write(folder, marker.STUDY)  # also marks a folder an older vae_study wrote
        resume = _check_folder(study, folder, fresh=fresh)
    except BaseException:
        release_folder(folder)
        raise
    return folder, resume


def _legacy_study_folder(folder: Path) -> bool:
    """Whether an unmarked folder is a study folder of a vae_study that did not mark its
    folders: ``study.yaml`` with ``optuna.db``, or ``study.yaml`` among a study folder's
    names only (a study that ended before Optuna's file was made); or only the lock file (a
    driver ended between locking the folder and marking it)."""
    layout = StudyLayout(folder)
    names = {p.name for p in folder.iterdir()}
    if names <= {layout.lock_file.name}:
        return True
    if not layout.study_file.is_file():
        return False
    known = {
        p.name
        for p in (
            layout.study_file,
            layout.lock_file,
            layout.results_file,
            layout.configs_file,
            layout.trials_dir,
            layout.tune_dir,
            layout.confirm_dir,
        )
    }
    return layout.optuna_db.is_file() or names <= known


def _check_folder(study: StudyConfig, folder: Path, *, fresh: bool) -> bool:
    layout = StudyLayout(folder)
    previous = layout.study_file
    if fresh:
        for p in folder.iterdir():
            if p in (layout.lock_file, folder / marker.MARKER_FILE):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    resume = previous.is_file()
    if resume:
        before = read_yaml(previous)
        now = study.to_dict()
        changed = [k for k in study.identity() if before.get(k) != now.get(k)]
        if changed == ["search"] and _only_confirm_changed(before, now, layout):
            changed = []  # a confirmation added to (or changed before it ran in) a study
        if changed:
            raise StudyError(
                f"{folder} holds a study with another "
                + ", ".join(changed)
                + " section; run it under a new name "
                "(--set name=...) or add --fresh to start it over"
            )
    try:
        probe = folder / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(
            f"cannot write the study folder {folder}: {exc.strerror}; choose another output.dir"
        ) from None
    write_yaml(previous, study.to_dict())
    return resume


def _only_confirm_changed(before: dict[str, Any], now: dict[str, Any], layout: StudyLayout) -> bool:
    """Whether the search sections differ in ``search.confirm`` alone while the folder holds
    no confirmation yet: the search's trials are the same, so a confirmation can be added to
    a study that has run (or changed before it started). Once ``confirm/`` exists, its
    experiment is that confirmation, and another one needs a new name or --fresh."""
    b, n = dict(before.get("search") or {}), dict(now.get("search") or {})
    b.pop("confirm", None)
    n.pop("confirm", None)
    return b == n and not layout.confirm_dir.exists()


_HELD_LOCKS: dict[Path, int] = {}  # study folder -> the descriptor holding its lock


def lock_folder(folder: Path) -> None:
    """Lock the study folder for this process: ``flock`` on its lock file, held open until
    ``release_folder`` or the process's end (the OS releases the lock of a killed driver, so
    a stale lock file never blocks a rerun). The file names the holder: pid and host.

    Another driver holding it is a ``StudyError`` naming that driver.
    """
    path = StudyLayout(folder).lock_file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown yet"
        os.close(fd)
        raise StudyError(
            f"the study folder {folder} is in use by another vae_study driver "
            f"({holder}); two drivers on one study collide: wait for it to end, "
            "stop it (Ctrl-C pauses it), or give this study another name "
            "(--set name=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[folder.resolve()] = fd


def release_folder(folder: Path) -> None:
    """Unlock a folder ``lock_folder`` locked (the lock file stays: it names no one now)."""
    fd = _HELD_LOCKS.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)
