"""A local study's Ray listens on loopback only: every TCP port of every Ray process.

Slow: starts a real local Ray the way ``run_study`` does (``start_ray``), runs a task so a
worker exists, and reads the listening sockets of this process and all it started from
/proc (Linux).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from study_factory import tiny_study
from vae_study.config.study import study_from_dict

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the command may hold spaces
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _address(hex_address: str, v6: bool) -> tuple[str, int]:
    ip, port = hex_address.split(":")
    raw = bytes.fromhex(ip)
    if v6:  # four host-order 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket the processes hold."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                pid = owner[fields[9]]
                try:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    name = "?"
                found.append((*_address(fields[1], v6), name))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_local_studys_ray_listens_on_loopback_only(tmp_path):
    import ray

    from vae_study.study.cluster import start_ray

    # The default token file, as every in-process study of the tests: Ray keeps the token
    # it read for the life of the process.
    study = study_from_dict(
        tiny_study(tmp_path, **{"ray.dashboard": True, "ray.dashboard_port": _free_port()})
    )
    assert not ray.is_initialized()
    start_ray(study)
    try:

        @ray.remote(num_cpus=0)
        def worker_pid() -> int:
            return os.getpid()

        assert ray.get(worker_pid.remote()) in _descendants(os.getpid())
        sockets = listening_sockets(_descendants(os.getpid()))
        names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # the check sees Ray's processes
        exposed = [s for s in sockets if s[0] not in LOOPBACK]
        assert not exposed, exposed
    finally:
        ray.shutdown()
    # The switch was for this Ray's start only.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
