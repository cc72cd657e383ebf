"""The Ray cluster a study runs on: starting or joining it safely (an owner-only token, a
loopback-only local node, a dashboard on localhost), the resources each trial gets, and the
shared storage a cluster of several nodes needs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from vae_study.config.study import StudyConfig
from vae_study.errors import StudyError


def ensure_private_token() -> Path | None:
    """Keep Ray's token authentication on, with a token file only its owner can read.

    Ray (2.52+) turns token authentication on for a local cluster and, when no token
    exists, writes one to ~/.ray/auth_token with the default (world-readable) mode. We
    create it first, mode 0600, so Ray uses ours. A token file someone else made that
    other users can read is left alone, with a warning.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        warnings.warn(
            "RAY_AUTH_MODE=disabled: anyone who reaches this Ray cluster's ports "
            "can run code on it",
            stacklevel=2,
        )
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists():
        if path.stat().st_mode & 0o077:
            warnings.warn(
                f"{path}, the Ray authentication token, is readable by other users; "
                f"run: chmod 600 {path}",
                stacklevel=2,
            )
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
        warnings.warn(
            f"ray.dashboard_host={cfg.dashboard_host}: the Ray dashboard, which "
            "can submit jobs that run code, is reachable by anyone who can reach "
            f"this host on port {cfg.dashboard_port}",
            stacklevel=2,
        )
    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs: dict[str, Any] = {
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    local: contextlib.AbstractContextManager = contextlib.nullcontext()
    if cfg.address is None:
        ensure_private_token()
        kwargs.update(
            include_dashboard=cfg.dashboard,
            dashboard_host=cfg.dashboard_host,
            dashboard_port=cfg.dashboard_port,
        )
        local = loopback_only()
    from vae_study.study.pause import signals_blocked

    try:
        # A local Ray's processes start with SIGTERM and SIGHUP blocked (Ray blocks SIGINT
        # itself): a signal to the study's process group pauses the study through them
        # instead of killing them under its running trials.
        with local, signals_blocked():
            # ray.address unset means a new local Ray: "local", since with no address Ray
            # would join any cluster it finds on this machine (RAY_ADDRESS, `ray start`).
            ctx = ray.init(address=cfg.address or "local", **kwargs)
    except ConnectionError as exc:
        raise StudyError(
            f"ray.address={cfg.address}: no Ray cluster answers ({exc}); start "
            "one with 'ray start --head' or leave ray.address unset for a local "
            "Ray"
        ) from None
    except ray.exceptions.AuthenticationError as exc:
        raise StudyError(
            f"ray.address={cfg.address}: the cluster asks for its "
            f"authentication token ({str(exc).splitlines()[0]}); copy the head "
            "node's ~/.ray/auth_token here (chmod 600) or set "
            "RAY_AUTH_TOKEN_PATH"
        ) from None
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url}", flush=True)
    return ctx


_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def set_ray_multinode(enabled: bool) -> bool | None:
    """Set Ray's multi-node switch for a node started from now on; returns what it was
    (None: this Ray has no such switch, nothing was set).

    The one private name of Ray that vae_study uses: Ray reads
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, into this constant, and offers no
    public way to make a local node bind loopback only. ``tests/test_loopback.py`` fails when
    a Ray release renames it."""
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if before is not None:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
    return before


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts: its processes listen on 127.0.0.1 only.

    Ray (2.40-2.60) binds its gRPC servers (GCS, raylet, object manager, workers) and its
    agents to every interface unless the node's IP is 127.0.0.1, and gives a node the
    machine's network address unless multi-node clusters are off: ``RAY_ENABLE_WINDOWS_OR_
    OSX_CLUSTER=0``, read once at import into a private constant (``set_ray_multinode``: the
    only switch there is). Both are set while ``ray.init`` starts the node, whose processes
    inherit the variable, then restored; the driver knows its node's IP from then on.
    """
    with environment({_CLUSTER_ENV: "0"}):
        before = set_ray_multinode(False)
        try:
            yield
        finally:
            if before is not None:
                set_ray_multinode(before)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the ``with`` block, then put back what was there."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ``auto`` packs at most this many trials on one GPU. A trial holds its CUDA context (about
# 0.5 GB), its float32 copy of the splits (about 210 MiB for MNIST), its model and Adam state
# (a few MB) and the test NLL's decoder outputs (eval.chunk_size x 784 floats, 26 MB at the
# default, a few times over): about 1 GB, so four fit a 16 GB GPU with room to spare and any
# GPU a study is likely to meet. More concurrent trials than that wait for a share.
MAX_TRIALS_PER_GPU = 4


def gpu_share(
    gpus_per_trial: float | str, gpus_total: float, max_concurrent: int, device: str = "auto"
) -> float:
    """GPUs per trial: ``auto`` gives each of ``max_concurrent`` trials an equal share of the
    cluster's GPUs, rounded down to 1/n so n trials pack one GPU, at most one whole GPU and at
    least 1/MAX_TRIALS_PER_GPU; no GPU in the cluster, or ``train.device: cpu``: 0 (the CPU).
    A number is kept as it is."""
    if gpus_per_trial != "auto":
        return float(gpus_per_trial)
    if gpus_total <= 0 or device == "cpu":
        return 0.0
    share = gpus_total / max_concurrent
    if share >= 1:
        return 1.0
    return 1.0 / min(math.ceil(1.0 / share), MAX_TRIALS_PER_GPU)


def trial_resources(study: StudyConfig, cpus: float, gpus_total: float) -> dict[str, float]:
    """CPUs and GPUs per trial on a cluster of ``cpus`` CPUs and ``gpus_total`` GPUs; a
    request the cluster can never meet is a ``StudyError``."""
    want_cpu = study.resources.cpus_per_trial
    g = gpu_share(
        study.resources.gpus_per_trial,
        gpus_total,
        study.search.max_concurrent,
        study.base.train.device,
    )
    if g > 0 and gpus_total == 0:
        raise StudyError(
            f"resources.gpus_per_trial={g}, but the Ray cluster has no GPU; use "
            "gpus_per_trial: 0 (CPU) or auto"
        )
    if g == 0 and study.base.train.device.startswith("cuda"):
        raise StudyError(
            f"train.device: {study.base.train.device}, but the Ray cluster has no "
            "GPU, so no trial gets a share; use train.device: auto or cpu"
        )
    if g > gpus_total:
        raise StudyError(
            f"resources.gpus_per_trial={g}, but the whole cluster has {gpus_total:g} GPUs"
        )
    if want_cpu > cpus:
        raise StudyError(
            f"resources.cpus_per_trial={want_cpu:g}, but the whole cluster has "
            f"{cpus:g} CPUs; no trial could ever start"
        )
    return {"cpu": want_cpu, "gpu": float(g)}


def resolve_resources(study: StudyConfig) -> dict[str, float]:
    """CPUs and GPUs per trial, checked against the cluster before anything is scheduled."""
    total = ray.cluster_resources()
    return trial_resources(study, total.get("CPU", 0.0), total.get("GPU", 0.0))


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
        refs = {
            n["NodeManagerAddress"]: sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker.resolve()))
            for n in nodes
        }
        blind = [addr for addr, ref in refs.items() if ray.get(ref, timeout=60) != token]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise StudyError(
            f"the study folder {folder} is not visible from the Ray nodes at "
            + ", ".join(sorted(set(blind)))
            + "; a study on several nodes needs "
            "output.dir on storage every node mounts at the same path (NFS, "
            "a shared disk)"
        )


def check_arch_on_nodes(arch: str) -> None:
    """A user model (``model.arch: package.module:ClassName``) must import on every alive
    Ray node, where its trials will build it: one tiny task per node imports it, so a node
    that lacks the module stops the study before any trial starts, naming the node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def imports(path: str) -> str | None:
        from vae_study.core.user_model import import_arch
        from vae_study.errors import VaeStudyError  # absolute: the task is pickled by value

        try:
            import_arch(path)
        except VaeStudyError as exc:
            return str(exc)
        return None

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})": imports.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(arch)
        for n in nodes
    }
    failed = [(addr, err) for addr, ref in refs.items() if (err := _import_error(ref))]
    if failed:
        addr, err = failed[0]
        others = f" (and on {len(failed) - 1} more nodes)" if len(failed) > 1 else ""
        raise StudyError(
            f"the user model {arch} cannot be imported on the Ray node at {addr}{others}: {err}"
            "; every node needs it: install its package there, set PYTHONPATH before "
            "'ray start', or submit the study with 'ray job submit --working-dir .'"
        )


def _import_error(ref: Any) -> str | None:
    """The import task's answer; a task that fails itself (vae_study missing or of another
    version on that node) is that node's error too."""
    try:
        return ray.get(ref, timeout=120)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        lines = [ln for ln in str(cause).splitlines() if ln.strip()]
        last = lines[-1][:200] if lines else ""
        return f"the check itself failed there ({type(cause).__name__}: {last})"
