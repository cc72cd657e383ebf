"""The Ray side of a study: the trainable, the searcher, the Tuner, the results table.

The only module that imports Ray. A study lives in ``<output.dir>/<name>/``:

    study.yaml      the resolved study file (what a resume is compared against)
    optuna.db       the Optuna study (``optuna-dashboard sqlite:///.../optuna.db``)
    results.csv     one row per trial, rewritten atomically as trials start and finish
    tune/           Ray Tune's experiment: trial folders, checkpoints, searcher state
    driver.lock     locked by the driver running the study (one driver per folder)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from . import metrics as M
from . import results as R
from .checkpoint import write_yaml
from .config import read_yaml
from .data import Source, prepare, read_source
from .errors import StudyError, TrainingDiverged, VaeStudyError
from .search import decode_params, define_by_run, encode_point, make_sampler, make_storage
from .study_config import StudyConfig
from .study_folder import LOCK_FILE, STUDY_FILE, TUNE_DIR

OPTUNA_TRIAL_KEY = "_optuna_trial"  # added to each trial's config by the searcher
NODE_KEY = "node"  # the Ray node id a trial ran on, in every report
# Optuna user attribute of a trial that was running when the study was paused (Ctrl-C).
# Optuna has no "interrupted" state: the trial stays RUNNING until the next run tells it its
# result (COMPLETE, FAIL or PRUNED); the attribute stays as a record that it was paused.
INTERRUPTED_ATTR = "vae_study_interrupted"

log = logging.getLogger("vae_study")


# ---------------------------------------------------------------------------------------
# The trainable: one trial = one ``fit``.


def train_trial(config: dict[str, Any], *, study: StudyConfig, source: Source) -> None:
    """Ray Tune function trainable: fit the trial's configuration, report every epoch.

    ``source`` is the dataset as read once by the driver (through Ray's object store); the
    trial presents it as its own ``data`` section says (train_subset, binarize), with the
    same validation and test examples as every other trial.

    Resumes from ``tune.get_checkpoint()`` when Ray restarts the trial. A diverged run is
    reported once with ``diverged: 1`` and ends normally, so Ray does not retry a
    deterministic failure and the searcher records it as failed.
    """
    import torch

    from .train import fit

    params = decode_params(study.search.space,
                           {k: v for k, v in config.items() if not k.startswith("_")})
    run = study.trial_config(params)
    torch.set_num_threads(max(1, int(study.resources.cpus_per_trial)))
    data = prepare(source, run.data, dequantize=run.dequantized)
    used = {M.TRAIN_EXAMPLES: len(data.train), M.TRAIN_NOISE: data.train_noise}
    logging.getLogger("ray").setLevel(logging.WARNING)  # not a line per checkpoint
    work = Path(tempfile.mkdtemp(prefix="vae_study_trial_"))
    restored = tune.get_checkpoint()

    node = ray.get_runtime_context().get_node_id()

    def report(row: dict[str, Any], ckpt_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**_reportable(row), **used, NODE_KEY: node}, checkpoint=checkpoint)

    try:
        if restored is not None:
            with restored.as_directory() as folder:
                resume = work / "restored"
                shutil.copytree(folder, resume)
            fit(run, out_dir=work / "run", resume_from=resume, data=data, on_epoch=report)
        else:
            fit(run, out_dir=work / "run", data=data, on_epoch=report)
    except TrainingDiverged as exc:
        tune.report({R.DIVERGED_KEY: 1, R.ERROR_KEY: str(exc), M.EPOCH: exc.epoch,
                     NODE_KEY: node})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reportable(row: dict[str, Any]) -> dict[str, Any]:
    """Ray wants flat scalars; the per-dimension KL list travels as text."""
    out = {}
    for k, v in row.items():
        out[k] = " ".join(f"{x:.5g}" for x in v) if isinstance(v, list) else v
    return out


# ---------------------------------------------------------------------------------------
# The searcher: Ray's OptunaSearch, made to tell Optuna the truth about every trial.


class StudySearch(OptunaSearch):
    """OptunaSearch that skips reports without the objective (intermediate epochs),
    records a diverged or metric-less trial as FAIL/PRUNED instead of leaving it
    RUNNING, and tags each trial's config with its Optuna trial number."""

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is not None:
            config[OPTUNA_TRIAL_KEY] = self._ot_trials[trial_id].number
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list):
            return
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a trial restored after Optuna recorded its end re-reports its result

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        state, value = optuna_outcome(metrics, result, error=error)
        ot_trial = self._ot_trials[trial_id]
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before the driver was killed; Optuna keeps that record
        except RuntimeError as exc:
            # The grid sampler stops the study when its last point is told; outside
            # study.optimize that is an error, after the trial is recorded. Nothing to do.
            if "Study.stop" not in str(exc):
                log.warning("optuna: %s", exc)
        except Exception as exc:  # already told (a restored driver): keep going
            log.warning("optuna: %s", exc)
        self._completed_trials.add(trial_id)


def optuna_outcome(metrics: list[str], result: dict | None, *,
                   error: bool = False) -> tuple[Any, Any]:
    """(Optuna state, value) of a trial that Ray ended with ``result`` as its last report:
    COMPLETE with the objective values, FAIL (an error, a divergence, a non-finite
    objective) or PRUNED (stopped by the scheduler before the objectives existed)."""
    values = [None if not result else result.get(m) for m in metrics]
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    diverged = bool(result and result.get(R.DIVERGED_KEY))
    if finite and not error and not diverged:
        return optuna.trial.TrialState.COMPLETE, (values if len(values) > 1 else values[0])
    failed = error or diverged or any(
        isinstance(v, float) and not math.isfinite(v) for v in values)
    return (optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED), None


def make_searcher(study: StudyConfig, folder: Path) -> ConcurrencyLimiter:
    objectives = study.search.objectives
    metric: Any = [o.metric for o in objectives] if len(objectives) > 1 else objectives[0].metric
    mode: Any = [o.mode for o in objectives] if len(objectives) > 1 else objectives[0].mode
    searcher = StudySearch(
        space=define_by_run(study.search.space),
        metric=metric,
        mode=mode,
        sampler=make_sampler(study.search),
        study_name=study.name,
        storage=make_storage(folder),
        points_to_evaluate=[encode_point(p) for p in study.search.points_to_evaluate] or None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=study.search.max_concurrent)


# ---------------------------------------------------------------------------------------
# The results table, kept current from Ray's trials.


def trial_row(trial: Any, study: StudyConfig, *, interrupted: bool = False) -> dict[str, Any]:
    """One results.csv row from a Ray ``Trial``. ``interrupted``: the trial was running
    when the study was paused (Ray has since marked it TERMINATED)."""
    last = dict(trial.last_result or {})
    params = decode_params(study.search.space,
                           {p.key: trial.config.get(p.key) for p in study.search.space})
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "optuna_trial": trial.config.get(OPTUNA_TRIAL_KEY),
        **params,
        M.EPOCH: last.get(M.EPOCH),
        "wall_s": last.get("time_total_s"),
        "node": last.get(NODE_KEY),
    }
    for key in (M.TRAIN_EXAMPLES, M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION,
                *M.FINAL_VAL_SCALARS,
                *M.TEST_SCALARS, M.TEST_NLL_EXAMPLES, M.TEST_KL_PER_DIM, M.TOTAL_SECONDS):
        row[key] = last.get(key)
    status = trial.status
    if interrupted and status in ("TERMINATED", "RUNNING", "PAUSED"):
        row["status"] = R.INTERRUPTED
    elif status == "ERROR":
        row["status"] = R.FAILED
        row[R.ERROR_KEY] = _first_line(trial)
    elif status == "TERMINATED":
        if last.get(R.DIVERGED_KEY):  # failed, not retried: the reason says it diverged
            row["status"] = R.FAILED
            row[R.ERROR_KEY] = last.get(R.ERROR_KEY)
        elif last.get(M.TEST_NEG_ELBO) is not None:  # the test metrics came with it
            row["status"] = R.COMPLETED
        else:
            row["status"] = R.STOPPED
    elif status in ("RUNNING", "PAUSED"):
        row["status"] = R.RUNNING
    else:
        row["status"] = R.PENDING
    ckpt = getattr(trial, "checkpoint", None)
    row["checkpoint"] = getattr(ckpt, "path", None)
    return row


def _first_line(trial: Any) -> str:
    try:
        err = trial.get_error()
    except Exception:
        err = None
    text = str(err) if err else "the trial failed (see its error.txt in the tune folder)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else text


def write_table(study: StudyConfig, folder: Path, trials: list,
                interrupted: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    """results.csv from Ray's trials (``interrupted``: the ids of those running when the study
    was paused); returns its rows. A finished trial Ray no longer knows keeps its row; an
    unfinished one was started after Ray's last snapshot and is run again under a new id."""
    rows = [trial_row(t, study, interrupted=t.trial_id in interrupted) for t in trials]
    known = {r["trial_id"] for r in rows}
    path = folder / R.RESULTS_FILE
    if path.is_file():
        try:
            previous = R.read_results(path).to_dict("records")
        except VaeStudyError:
            previous = []  # a damaged table is rebuilt from Ray's trials
        rows += [r for r in previous
                 if r["trial_id"] not in known and r.get("status") in R.FINISHED]
    R.write_results(path, rows, [p.key for p in study.search.space],
                    [(o.metric, o.mode) for o in study.search.objectives])
    return rows


class ResultsTable(Callback):
    """Rewrites results.csv from all of Ray's trials whenever one starts, ends or (at most
    every 2 s) reports, and when the experiment ends.

    A study paused by Ctrl-C ends Tune's loop with trials still running; Tune then marks them
    TERMINATED as it stops their workers, like a finished trial. What each trial was doing at
    the end of Tune's last step (``on_step_end``) tells them apart: the table calls them
    interrupted. (Pickled with the Tuner: a restored study uses this object again.)
    """

    def __init__(self, study: StudyConfig, folder: Path) -> None:
        self.study = study
        self.folder = folder
        self.last_write = 0.0

    def write(self, trials: list, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < 2.0:
            return
        write_table(self.study, self.folder, trials)
        self.last_write = now

    def on_trial_start(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.write(trials, force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.write(trials)

    def on_step_end(self, iteration, trials, **info):
        self.live = {t.trial_id for t in trials if t.status in ("RUNNING", "PAUSED")}

    def on_experiment_end(self, trials, **info):
        write_table(self.study, self.folder, trials, getattr(self, "live", set()))
        self.last_write = time.monotonic()


# ---------------------------------------------------------------------------------------
# The driver.


def prepare_folder(study: StudyConfig, *, fresh: bool) -> tuple[Path, bool]:
    """Create or check the study folder and lock it for this driver (``release_folder``
    unlocks it); returns (folder, whether it is a resume).

    A folder made by a study with another search space or base config is refused, and so is
    a folder another driver is running (see ``lock_folder``).
    """
    out_root = Path(study.output.dir).expanduser()
    folder = out_root / study.name
    resolved_root = out_root.resolve()
    if folder.is_symlink() or (folder.exists() and
                               resolved_root not in folder.resolve().parents):
        raise StudyError(f"the study folder {folder} points outside output.dir "
                         f"({out_root}); refusing to write there")
    previous = folder / STUDY_FILE
    if fresh and folder.exists() and not previous.is_file() and any(
            p.name != LOCK_FILE for p in folder.iterdir()):
        raise StudyError(f"--fresh would delete {folder}, which is not a vae_study "
                         "study folder; remove it yourself or choose another name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"cannot write the study folder {folder}: {exc.strerror}; choose "
                         "another output.dir") from None
    lock_folder(folder)  # before anything in it is deleted or written
    try:
        resume = _check_folder(study, folder, fresh=fresh)
    except BaseException:
        release_folder(folder)
        raise
    return folder, resume


def _check_folder(study: StudyConfig, folder: Path, *, fresh: bool) -> bool:
    previous = folder / STUDY_FILE
    if fresh:
        for p in folder.iterdir():
            if p.name == LOCK_FILE:
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
        if changed:
            raise StudyError(f"{folder} holds a study with another "
                             + ", ".join(changed) + " section; run it under a new name "
                             "(--set name=...) or add --fresh to start it over")
    try:
        probe = folder / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"cannot write the study folder {folder}: {exc.strerror}; choose "
                         "another output.dir") from None
    write_yaml(folder / STUDY_FILE, study.to_dict())
    return resume


_HELD_LOCKS: dict[Path, int] = {}  # study folder -> the descriptor holding its lock


def lock_folder(folder: Path) -> None:
    """Lock the study folder for this process: ``flock`` on its LOCK_FILE, held open until
    ``release_folder`` or the process's end (the OS releases the lock of a killed driver, so
    a stale lock file never blocks a rerun). The file names the holder: pid and host.

    Another driver holding it is a ``StudyError`` naming that driver.
    """
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown yet"
        os.close(fd)
        raise StudyError(f"the study folder {folder} is in use by another vae_study driver "
                         f"({holder}); two drivers on one study collide: wait for it to end, "
                         "stop it (Ctrl-C pauses it), or give this study another name "
                         "(--set name=...)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS[folder.resolve()] = fd


def release_folder(folder: Path) -> None:
    """Unlock a folder ``lock_folder`` locked (the lock file stays: it names no one now)."""
    fd = _HELD_LOCKS.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)


def ensure_private_token() -> Path | None:
    """Keep Ray's token authentication on, with a token file only its owner can read.

    Ray (2.52+) turns token authentication on for a local cluster and, when no token
    exists, writes one to ~/.ray/auth_token with the default (world-readable) mode. We
    create it first, mode 0600, so Ray uses ours. A token file someone else made that
    other users can read is left alone, with a warning.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        warnings.warn("RAY_AUTH_MODE=disabled: anyone who reaches this Ray cluster's ports "
                      "can run code on it", stacklevel=2)
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists():
        if path.stat().st_mode & 0o077:
            warnings.warn(f"{path}, the Ray authentication token, is readable by other users; "
                          f"run: chmod 600 {path}", stacklevel=2)
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by a process beside us in the meantime
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what Ray's own generator makes
    return path


def start_ray(study: StudyConfig) -> Any:
    """Start a local Ray, or join the cluster at ray.address; print the dashboard URL."""
    cfg = study.ray
    if cfg.dashboard and cfg.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(f"ray.dashboard_host={cfg.dashboard_host}: the Ray dashboard, which "
                      "can submit jobs that run code, is reachable by anyone who can reach "
                      f"this host on port {cfg.dashboard_port}", stacklevel=2)
    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs: dict[str, Any] = {"configure_logging": True, "logging_level": logging.WARNING,
                              "log_to_driver": True}
    local = contextlib.nullcontext()
    if cfg.address is None:
        ensure_private_token()
        kwargs.update(include_dashboard=cfg.dashboard, dashboard_host=cfg.dashboard_host,
                      dashboard_port=cfg.dashboard_port)
        local = loopback_only()
    try:
        with local:
            ctx = ray.init(address=cfg.address, **kwargs)
    except ConnectionError as exc:
        raise StudyError(f"ray.address={cfg.address}: no Ray cluster answers ({exc}); start "
                         "one with 'ray start --head' or leave ray.address unset for a local "
                         "Ray") from None
    except ray.exceptions.AuthenticationError as exc:
        raise StudyError(f"ray.address={cfg.address}: the cluster asks for its "
                         f"authentication token ({str(exc).splitlines()[0]}); copy the head "
                         "node's ~/.ray/auth_token here (chmod 600) or set "
                         "RAY_AUTH_TOKEN_PATH") from None
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
    return ctx


_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only():
    """While a local Ray starts: its processes listen on 127.0.0.1 only.

    Ray (2.40-2.60) binds its gRPC servers (GCS, raylet, object manager, workers) and its
    agents to every interface unless the node's IP is 127.0.0.1, and gives a node the
    machine's network address unless multi-node clusters are off: ``RAY_ENABLE_WINDOWS_OR_
    OSX_CLUSTER=0``, read once at import into ``ray._private.ray_constants`` (private: the
    only switch there is). Both are set while ``ray.init`` starts the node, whose processes
    inherit the variable, then restored; the driver knows its node's IP from then on.
    """
    from ray._private import ray_constants

    before_env = os.environ.get(_CLUSTER_ENV)
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = before_env
        if before is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before


def resolve_resources(study: StudyConfig) -> dict[str, float]:
    """CPUs and GPUs per trial, checked against the cluster before anything is scheduled."""
    total = ray.cluster_resources()
    cpus, gpus_total = total.get("CPU", 0.0), total.get("GPU", 0.0)
    want_cpu = study.resources.cpus_per_trial
    g = study.resources.gpus_per_trial
    if g == "auto":
        if gpus_total > 0:
            share = gpus_total / study.search.max_concurrent
            g = 1.0 if share >= 1 else 1.0 / math.ceil(1.0 / share)
        else:
            g = 0.0
    if g > 0 and gpus_total == 0:
        raise StudyError(f"resources.gpus_per_trial={g}, but the Ray cluster has no GPU; use "
                         "gpus_per_trial: 0 (CPU) or auto")
    if g > gpus_total:
        raise StudyError(f"resources.gpus_per_trial={g}, but the whole cluster has "
                         f"{gpus_total:g} GPUs")
    if want_cpu > cpus:
        raise StudyError(f"resources.cpus_per_trial={want_cpu:g}, but the whole cluster has "
                         f"{cpus:g} CPUs; no trial could ever start")
    return {"cpu": want_cpu, "gpu": float(g)}


def check_shared_storage(folder: Path) -> None:
    """On a cluster of several nodes every node must see the study folder (shared storage)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    marker = folder / ".shared_storage_check"
    token = f"{os.getpid()}-{time.time()}"
    marker.write_text(token)

    @ray.remote(num_cpus=0)
    def sees(path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    try:
        refs = {n["NodeManagerAddress"]: sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(marker.resolve())) for n in nodes}
        blind = [addr for addr, ref in refs.items() if ray.get(ref, timeout=60) != token]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise StudyError(f"the study folder {folder} is not visible from the Ray nodes at "
                         + ", ".join(sorted(set(blind))) + "; a study on several nodes needs "
                         "output.dir on storage every node mounts at the same path (NFS, "
                         "a shared disk)")


class Pause:
    """Ctrl-C (SIGINT) as a clean pause of a study, for the life of the ``with`` block.

    Ray Tune's own SIGINT handler is turned off (``TUNE_DISABLE_SIGINT_HANDLER``) so every
    Ctrl-C passes through here. Before Tune's loop runs it is a KeyboardInterrupt as usual:
    nothing of the study is being written. In the loop, the first one asks Tune to stop
    through the SIGUSR1 handler Tune installs for that purpose: Tune snapshots its experiment
    state and stops the trials. From then until the driver has written its records and Ray
    has shut down, a Ctrl-C is only noted: Tune writes its experiment state in place, and a
    KeyboardInterrupt half-way through it would leave a study that cannot be resumed.
    ``requested`` says whether any Ctrl-C came; the caller raises KeyboardInterrupt at the end.
    """

    BEFORE, TUNING, SAVING = "before", "tuning", "saving"
    _RAY_LINES = ("Stop signal received", "Experiment has been interrupted",
                  "Trials did not complete")  # Tune's words for a pause (Tuner.restore...)

    def __init__(self) -> None:
        self.phase = self.BEFORE
        self.requested = False
        self._installed = False

    def __enter__(self) -> Pause:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread: Ray's default then
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        # A SIGUSR1 handler left by an earlier Tune run in this process would stop nothing.
        self._previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        logging.getLogger("ray.tune.tune").addFilter(self._quiet)
        self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)
        signal.signal(signal.SIGUSR1, self._previous_usr1)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        logging.getLogger("ray.tune.tune").removeFilter(self._quiet)
        self._installed = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.phase == self.BEFORE:
            raise KeyboardInterrupt
        first, self.requested = not self.requested, True
        if self.phase == self.TUNING and first:
            stop_tune = signal.getsignal(signal.SIGUSR1)
            if not callable(stop_tune):  # Tune's loop has not started: nothing to save yet
                raise KeyboardInterrupt
            print("vae_study run: Ctrl-C: pausing the study, saving the state of every trial "
                  "(a few seconds)", file=sys.stderr, flush=True)
            stop_tune(signal.SIGUSR1, frame)
        else:
            print("vae_study run: still saving the study's state; Ctrl-C is ignored until it "
                  "is saved", file=sys.stderr, flush=True)

    def _quiet(self, record: logging.LogRecord) -> bool:
        return not (self.requested and record.getMessage().startswith(self._RAY_LINES))


def run_study(study: StudyConfig, *, fresh: bool = False, verbose: int = 1) -> Path:
    """Run (or continue) a study to ``search.num_trials`` trials; returns its folder.

    Ctrl-C pauses the study (see ``Pause``): trials running then are recorded as
    interrupted, and KeyboardInterrupt is raised once everything is saved; running the same
    command again continues the study.
    """
    # The dataset first: missing or damaged files stop the study before its folder exists.
    source = read_source(study.base.data.dataset, study.base.data.root)  # once
    check_data(study, source)
    folder, resume = prepare_folder(study, fresh=fresh)
    try:
        _run_locked(study, folder, source, resume, verbose)
    finally:
        release_folder(folder)
    return folder


def _run_locked(study: StudyConfig, folder: Path, source: Source, resume: bool,
                verbose: int) -> None:
    check_optuna_db(folder, study.name)
    # The objectives (test/...) exist only in a trial's last report; the epochs before it
    # report the val/ metrics alone, which Tune's strict check would reject.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Keeping one checkpoint per trial makes Tune snapshot its experiment state after every
    # epoch: what a killed driver resumes from stays current. Its warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    print(f"vae_study run: study {study.name!r} in {folder}"
          + (" (continuing)" if resume else ""), flush=True)
    with Pause() as pause:
        _run_tuner(study, folder, source, verbose, pause)
    if pause.requested:
        raise KeyboardInterrupt


def _run_tuner(study: StudyConfig, folder: Path, source: Source, verbose: int,
               pause: Pause) -> None:
    started_here = not ray.is_initialized()
    start_ray(study)
    try:
        resources = resolve_resources(study)
        check_shared_storage(folder)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, study=study, source=source),
            {"cpu": resources["cpu"], "gpu": resources["gpu"]})
        tune_dir = folder / TUNE_DIR
        if tune.Tuner.can_restore(str(tune_dir.resolve())):
            check_tune_state(tune_dir)
            try:
                tuner = tune.Tuner.restore(str(tune_dir.resolve()), trainable,
                                           resume_unfinished=True, resume_errored=True)
            except Exception as exc:
                raise StudyError(f"Ray Tune's experiment state in {tune_dir} cannot be "
                                 f"restored ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing "
                                 "was changed; start the study over with --fresh") from None
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=_tune_config(study, folder),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=str(folder.resolve()),
                    callbacks=[ResultsTable(study, folder)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=2),
                    verbose=verbose,
                ),
            )
        pause.phase = Pause.TUNING
        grid = tuner.fit()
        paused = pause.requested  # a Ctrl-C from now on came after Tune's loop ended
        pause.phase = Pause.SAVING
        _finish(study, folder, grid, paused=paused)
    finally:
        if started_here:
            ray.shutdown()


def check_data(study: StudyConfig, source: Source) -> None:
    """The base data section, with the largest searched training subset, can be presented
    from ``source``: a train_subset or val_size too large stops the study before it starts.
    (Searched data keys change the training data only; see study_config.)"""
    subsets = [v for p in study.search.space if p.key == "data.train_subset"
               for v in (p.values if p.kind == "choice" else (p.high,)) if v is not None]
    config = study.base
    if subsets:
        config = study.trial_config({"data.train_subset": int(max(subsets))})
    prepare(source, config.data, dequantize=config.dequantized)


def check_tune_state(tune_dir: Path) -> None:
    """Ray Tune skips an experiment state it cannot parse and starts the trials over; a
    damaged state must stop the study instead, before anything is overwritten."""
    for path in sorted(tune_dir.glob("experiment_state-*.json"))[-1:]:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StudyError(f"Ray Tune's experiment state {path} cannot be restored "
                             f"({type(exc).__name__}: {exc}); nothing was changed; start "
                             "the study over with --fresh") from None


def check_optuna_db(folder: Path, name: str) -> None:
    """A damaged optuna.db is a clear error before anything is scheduled, not a crash."""
    db = folder / "optuna.db"
    if not db.exists():
        return
    try:
        storage = make_storage(folder)
        optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return  # the file exists but this study was never created in it (killed early)
    except Exception as exc:
        raise StudyError(f"{db} cannot be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); it was left as "
                         "it is; move it away or start over with --fresh") from None


def _tune_config(study: StudyConfig, folder: Path) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if study.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=M.EPOCH, metric=study.scheduler.metric,
            mode=M.DIRECTIONS.get(study.scheduler.metric, "min"),
            max_t=study.base.train.epochs, grace_period=study.scheduler.grace_period,
            reduction_factor=study.scheduler.reduction_factor)
    return tune.TuneConfig(
        search_alg=make_searcher(study, folder),
        scheduler=scheduler,
        num_samples=study.search.num_trials,
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"


def _finish(study: StudyConfig, folder: Path, grid: Any, *, paused: bool) -> None:
    """The final results.csv and Optuna records, and one line saying where the study stands.

    Finished: every Optuna trial ends; one still RUNNING that Ray never recorded (asked by a
    driver killed before Tune's snapshot) never ran: FAIL. Paused: Optuna trials still
    RUNNING stay so, marked with ``INTERRUPTED_ATTR``: the next run tells them their result.
    """
    trials = list(grid._experiment_analysis.trials)
    path = folder / R.RESULTS_FILE
    rows: list[dict[str, Any]] = []
    if paused:
        try:  # written by ResultsTable as Tune ended, with the interrupted trials told apart
            rows = R.read_results(path).to_dict("records")
        except VaeStudyError:
            rows = []
    if not rows:
        rows = write_table(study, folder, trials)
    status = {str(r["trial_id"]): r["status"] for r in rows}
    _finish_optuna(study, folder, trials, status, paused=paused)
    count = {s: sum(1 for v in status.values() if v == s)
             for s in (R.COMPLETED, R.STOPPED, R.FAILED, R.INTERRUPTED, R.PENDING)}
    finished = count[R.COMPLETED] + count[R.STOPPED] + count[R.FAILED]
    detail = ", ".join(f"{n} {s}" for s, n in count.items() if n)
    head = "paused" if paused else "done"
    print(f"vae_study run: {head}: {finished} of {study.search.num_trials} trials finished"
          + (f" ({detail})" if detail else "") + f"; results in {path}", flush=True)


def _finish_optuna(study: StudyConfig, folder: Path, trials: list, status: dict[str, str],
                   *, paused: bool) -> None:
    storage = make_storage(folder)
    ot_study = optuna.load_study(study_name=study.name, storage=storage)
    study_id = storage.get_study_id_from_name(study.name)
    by_number = {t.config.get(OPTUNA_TRIAL_KEY): t for t in trials}
    metrics = [o.metric for o in study.search.objectives]
    for t in ot_study.get_trials(deepcopy=False,
                                 states=(optuna.trial.TrialState.RUNNING,
                                         optuna.trial.TrialState.WAITING)):
        ray_trial = by_number.get(t.number)
        ended = ray_trial is not None and status.get(ray_trial.trial_id) in R.FINISHED
        if ended:  # Ray ended it but the searcher never told Optuna (an older snapshot)
            state, value = optuna_outcome(metrics, ray_trial.last_result,
                                          error=ray_trial.status == "ERROR")
            _tell(ot_study, t.number, state, value)
        elif paused:
            if t.state == optuna.trial.TrialState.RUNNING:
                storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(
                    study_id, t.number), INTERRUPTED_ATTR, True)
        else:  # asked by a driver that was killed before Ray recorded the trial: never ran
            _tell(ot_study, t.number, optuna.trial.TrialState.FAIL, None)


def _tell(ot_study: Any, number: int, state: Any, value: Any) -> None:
    try:
        ot_study.tell(number, value, state=state)
    except RuntimeError as exc:  # the grid sampler's Study.stop outside optimize
        if "Study.stop" not in str(exc):
            log.warning("optuna: %s", exc)
