"""Checks that every node of a Ray cluster can run the study's trials, made before any trial
starts: each node sees the study folder (shared storage) and imports a user model."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray

from vae_study.errors import StudyError


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
