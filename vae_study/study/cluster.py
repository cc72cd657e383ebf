"""The Ray cluster a study runs on: starting or joining it safely (an owner-only token, a
loopback-only local node, a dashboard on localhost). What each trial gets of it is in
``resources``; what every node of it must see and import, in ``node_checks``."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
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
