"""One driver per study folder: a second is refused at once, naming the first; the lock of a
killed driver does not outlive it. Fast: the lock is held by a bare subprocess, no Ray."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study_factory import tiny_study, write_study
from vae_study.cli import main
from vae_study.config.study import study_from_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.errors import StudyError
from vae_study.records.layout import LOCK_FILE
from vae_study.records.lock import lock_folder, release_folder


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another driver: a process that locks ``folder`` and waits."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vae_study.records.lock import lock_folder
        lock_folder(Path({str(folder)!r}))
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_driver_is_refused_naming_the_first_and_a_killed_ones_lock_is_free(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    holder = _hold_lock(folder)
    try:
        with pytest.raises(StudyError) as err:
            lock_folder(folder)
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "in use by another vae_study driver" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a driver killed: its lock file stays behind
        holder.wait()
    assert (folder / LOCK_FILE).read_text().startswith(f"pid {holder.pid} ")
    lock_folder(folder)  # the stale file blocks nothing
    try:
        assert (folder / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    finally:
        release_folder(folder)
    lock_folder(folder)  # released: this process can take it again
    release_folder(folder)


def test_run_on_a_folder_in_use_exits_2_and_touches_nothing_even_with_fresh(tmp_path, capsys):
    raw = tiny_study(tmp_path)
    path = write_study(tmp_path, raw)
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    write_yaml(folder / "study.yaml", study_from_dict(raw).to_dict())
    (folder / "results.csv").write_text("trial_id,status\nabc,running\n")
    holder = _hold_lock(folder)
    try:
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        for extra in ([], ["--fresh"]):
            assert main(["run", str(path), "--no-report", *extra]) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and err.count("\n") == 1, err
        after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert after == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
