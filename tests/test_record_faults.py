"""The study's record survives what a real machine does to a study: a driver SIGKILLed at any
instant (a deterministic fault hook: the n-th atomic write of the driver or of a trial kills
the driver mid-write), a full disk, and SIGTERM or SIGHUP to the study's process group.

Slow: each case runs real drivers (``python -m vae_study run``) with a local Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from study_factory import (
    Hold,
    attempts,
    optuna_states,
    read_table,
    slow_trials,
    start_driver,
    tiny_study,
    wait_for,
    write_study,
)
from vae_study import metrics as M
from vae_study.files import DRIVER_PID_ENV, FAULT_ENV
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, FAILED, INTERRUPTED, RESULTS_FILE, RUNNING
from vae_study.records.stage import INTERRUPTED_ATTR

POINTS = [
    {"train.beta": 0.5, "model.latent_dim": 2},
    {"train.beta": 2.0, "model.latent_dim": 4},
    {"train.beta": 1.0, "model.latent_dim": 2},
    {"train.beta": 4.0, "model.latent_dim": 4},
]
KEY = ["train.beta", "model.latent_dim", "replicate"]
NUMBERS = (M.VAL_NEG_ELBO, M.VAL_NLL, M.TEST_NLL, M.TEST_RATE, M.TEST_DISTORTION)


def _points_study(tmp_path: Path, **over) -> dict:
    """Four configurations fixed in advance (points to evaluate), two seeds each: the same
    members whatever order a resumed study trains them in."""
    keys = {
        "search.num_trials": 4,
        "search.max_concurrent": 2,
        "search.replicates": 2,
        "search.points_to_evaluate": POINTS,
        "train.epochs": 3,
    }
    keys.update(over)
    return tiny_study(tmp_path, **keys)


def _run(tmp_path: Path, path: Path, env: dict | None = None, timeout: float = 400):
    """The same command a user types; returns (exit status, its output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _reap(proc.pid)
    return proc.returncode, out


def _study_processes(driver_pid: int) -> list[int]:
    """Processes started for the driver ``driver_pid`` (Ray's, with the fault hook's
    variable naming that driver in their environment)."""
    marker = f"{DRIVER_PID_ENV}={driver_pid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry))
    return found


def _reap(driver_pid: int, grace: float = 20.0) -> None:
    """Wait for the processes of a dead driver to end (a rerun must not meet a trial of
    the last one still writing); fail if any outlives ``grace`` seconds."""
    try:
        os.killpg(driver_pid, signal.SIGKILL)  # its process group: the GCS, the raylet
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _study_processes(driver_pid):
            return
        time.sleep(0.2)
    left = _study_processes(driver_pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of a dead driver still running after {grace} s: {left}"


def _members(folder: Path):
    table = R.read_results(folder / RESULTS_FILE)
    return table.set_index(KEY).sort_index()


def _optuna_equals_results(folder: Path, name: str = "tiny") -> None:
    """optuna.db agrees with results.csv configuration by configuration: its value is the
    mean of the members' val/nll, its parameters theirs."""
    table = R.read_results(folder / RESULTS_FILE)
    ot = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert {t.state for t in ot.trials} == {optuna.trial.TrialState.COMPLETE}
    for t in ot.trials:
        rows = table[table["config_id"] == t.number]
        assert len(rows) == 2 and set(rows["status"]) == {COMPLETED}
        assert t.value == pytest.approx(rows[M.VAL_NLL].mean(), rel=1e-12, abs=0)
        assert t.params["train.beta"] == rows["train.beta"].iloc[0]


# Epochs enough that a study outlasts two dozen runs each killed a few writes in.
LONG = {"train.epochs": 6}


@pytest.mark.slow
def test_a_driver_killed_at_twenty_instants_resumes_every_member_exactly(tmp_path):
    """The n-th atomic write of the driver (tables, member files, study.yaml) or of a trial
    (checkpoints, metrics, member files) kills the driver between writing a file and
    renaming it into place; the same command again, over and over, finishes the study with
    every member's numbers equal, to the bit, to an uninterrupted run of the same seeds."""
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    path = write_study(straight_dir, _points_study(straight_dir, **LONG))
    code, out = _run(straight_dir, path)
    assert code == 0, out[-3000:]
    straight = _members(straight_dir / "runs" / "tiny")

    path = write_study(tmp_path, _points_study(tmp_path, **LONG))
    folder = tmp_path / "runs" / "tiny"
    # Instants spread over the study's life: early writes of a run (its start, the first
    # checkpoints) and later ones (final metrics, tables after a trial ends).
    faults = [
        ("trial", 4), ("driver", 2), ("trial", 7), ("driver", 5), ("trial", 2), ("driver", 1),
        ("trial", 9), ("driver", 3), ("trial", 6), ("driver", 7), ("trial", 3), ("driver", 4),
        ("trial", 8), ("driver", 6), ("trial", 5), ("driver", 2), ("trial", 10), ("driver", 8),
        ("trial", 2), ("driver", 5), ("trial", 6), ("driver", 3), ("trial", 4), ("driver", 9),
    ]  # fmt: skip
    kills = []
    for who, n in faults:
        code, out = _run(tmp_path, path, {FAULT_ENV: f"{who}:{n}"})
        if code == 0:
            break  # the study finished before this write came
        assert code == -signal.SIGKILL, out[-3000:]  # by the hook: nothing else kills
        if who == "driver":  # a trial's words go to Ray's log, which dies with the driver
            assert f"killing the driver at driver write {n}" in out, out[-3000:]
        kills.append((who, n))
    assert len(kills) >= 20, kills
    code, out = _run(tmp_path, path)
    assert code == 0, out[-3000:]
    table = R.read_results(folder / RESULTS_FILE)
    errors = table[table["status"] != COMPLETED][["config_id", "replicate", "error"]]
    assert "done: 4 of 4 configurations finished (4 completed)" in out, errors.to_string()

    resumed = _members(folder)
    assert list(resumed.index) == list(straight.index)
    for metric in NUMBERS:
        assert list(resumed[metric]) == list(straight[metric]), metric  # to the bit
    _optuna_equals_results(folder)
    assert optuna_states(folder, "tiny") == {"COMPLETE": 4}
    # Killed runs made the members start again, each from its last whole checkpoint.
    starts = [a for cid in range(4) for r in (0, 1) for a in attempts(folder, cid, r)]
    assert len(starts) > 8
    assert any(a["from_epoch"] > 0 for a in starts)


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount refused a tmpfs here: {done.stderr.strip()}")


def _fill(where: Path) -> Path:
    """Fill the filesystem of ``where`` up to the last byte; returns the ballast file."""
    ballast = where / "ballast"
    with open(ballast, "wb", buffering=0) as f:  # unbuffered: close has nothing to flush
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return ballast


@pytest.mark.slow
def test_a_full_disk_mid_study_is_one_line_and_the_same_command_finishes_it(tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "64m")
    try:
        raw = slow_trials(tmp_path, epochs=12, **{"output.dir": str(small / "runs")})
        path = write_study(tmp_path, raw)
        folder = small / "runs" / "tiny"
        env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}
        hold = Hold(tmp_path)
        hold.at(2, configs=[1])  # the first configuration finishes, the second waits at 2

        def one_done_one_running():
            table = read_table(folder)
            if table is None:
                return None
            done = table[table["status"] == COMPLETED]
            running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 2)]
            if len(done) and len(running):
                return done.set_index("config_id")[M.TEST_NLL].to_dict()
            return None

        proc, log = start_driver(tmp_path, path, "full.log", {**env, **hold.env})
        try:
            done = wait_for(proc, log, one_done_one_running, timeout=300, what="a full disk")
            ballast = _fill(small)
            hold.release()  # its next epoch's checkpoint meets the full disk
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        out = (tmp_path / "full.log").read_text()
        assert code == 2, out[-3000:]
        last = out.strip().splitlines()[-1]
        assert last.startswith("vae-study: error: the disk holding "), out[-3000:]
        assert "is full" in last and "MiB free" in last, last
        assert "free space and run the same command" in last, last
        assert "Traceback" not in out, out[-3000:]

        ballast.unlink()
        code, out = _run(tmp_path, path, env)
        assert code == 0, out[-3000:]
        table = R.read_results(folder / RESULTS_FILE)
        assert len(table) == 4 and set(table["status"]) == {COMPLETED}
        after = table.set_index("config_id")[M.TEST_NLL].to_dict()
        for cid, nll in done.items():  # every finished trial kept, not trained again
            assert after[cid] == nll
            assert len(attempts(folder, cid)) == 1
        assert optuna_states(folder, "tiny") == {"COMPLETE": 4}
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "status"),
    [(signal.SIGTERM, True, 143), (signal.SIGHUP, False, 129)],
)
def test_sigterm_and_sighup_pause_the_study_as_ctrl_c_does(tmp_path, signum, to_group, status):
    """SIGTERM to the study's whole process group (what Slurm and a container runtime
    send), or SIGHUP to the driver: the pause line, the command to continue, exit 128 + the
    signal within 20 s, nothing FAIL in Optuna; the same command then finishes the study."""
    raw = slow_trials(tmp_path, epochs=20)
    path = write_study(tmp_path, raw)
    folder = tmp_path / "runs" / "tiny"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    def mid_trial():
        table = read_table(folder)
        if table is None:
            return None
        running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 2)]
        return [int(c) for c in running["config_id"]] or None

    proc, log = start_driver(tmp_path, path, "first.log", env)
    try:
        running = wait_for(proc, log, mid_trial, timeout=300, what=signal.Signals(signum).name)
        sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    out = (tmp_path / "first.log").read_text()
    assert code == status, out[-3000:]
    assert took < 20, took
    assert "paused:" in out and "Traceback" not in out, out[-3000:]
    hint = "vae-study: interrupted; to continue, run the same command again: "
    assert out.strip().splitlines()[-1] == f"{hint}python -m vae_study run {path} --no-report"
    ot = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
    states = {t.number: t for t in ot.trials}
    assert optuna.trial.TrialState.FAIL not in {t.state for t in ot.trials}
    for cid in running:
        assert states[cid].state == optuna.trial.TrialState.RUNNING
        assert states[cid].user_attrs.get(INTERRUPTED_ATTR) is True
    table = R.read_results(folder / RESULTS_FILE)
    assert set(table.set_index("config_id").loc[running, "status"]) == {INTERRUPTED}

    code, out = _run(tmp_path, path, env)
    assert code == 0, out[-3000:]
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    for cid in running:
        starts = attempts(folder, cid)
        assert len(starts) == 2 and starts[1]["from_epoch"] > 1, starts


@pytest.mark.slow
def test_a_truncated_checkpoint_fails_its_configuration_naming_it_while_others_finish(tmp_path):
    path = write_study(tmp_path, slow_trials(tmp_path, epochs=12, **{"search.num_trials": 2}))
    folder = tmp_path / "runs" / "tiny"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    def mid_trial():
        table = read_table(folder)
        if table is None:
            return None
        running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 2)]
        return (int(running["config_id"].iloc[0]),) if len(running) else None  # 0 is an id

    hold = Hold(tmp_path)
    hold.at(2)  # the first trial waits after its second epoch, its checkpoint written
    proc, log = start_driver(tmp_path, path, "first.log", {**env, **hold.env})
    try:
        (cid,) = wait_for(proc, log, mid_trial)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        hold.release()
    _reap(proc.pid)
    state = folder / "trials" / f"{cid:04d}" / "replicate_0" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a disk that lost the end of the file
    code, out = _run(tmp_path, path, env)
    assert code == 0, out[-3000:]
    table = R.read_results(folder / RESULTS_FILE).set_index("config_id")
    assert table.loc[cid, "status"] == FAILED
    assert str(state) in table.loc[cid, "error"], table.loc[cid, "error"]
    others = table.drop(index=cid)
    assert len(others) == 1 and set(others["status"]) == {COMPLETED}
    assert optuna_states(folder, "tiny") == {"FAIL": 1, "COMPLETE": 1}


@pytest.mark.slow
def test_two_studies_in_one_output_dir_both_finish_a_report_reads_one_while_it_runs(tmp_path):
    """Two drivers side by side in one output.dir; ``report`` on a study that is running;
    no Ray process of either study a few seconds after its driver exits."""
    from vae_study.report.page import build_report

    hold = Hold(tmp_path)  # every trial of both studies waits after its epoch 2
    hold.at(2)
    env = {
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token"),
        FAULT_ENV: "driver:1000000",  # never fires: names the driver in its Ray processes
        **hold.env,
    }
    procs = []
    for name in ("first", "second"):
        path = tmp_path / f"{name}.yaml"
        raw = slow_trials(tmp_path, epochs=8, **{"name": name, "search.num_trials": 2})
        path.write_text(yaml.safe_dump(raw))
        procs.append(start_driver(tmp_path, path, f"{name}.log", env))
    first = tmp_path / "runs" / "first"

    def running():
        table = read_table(first)
        return table is not None and (table["status"] == RUNNING).any() or None

    try:
        wait_for(*procs[0], running, timeout=300, what="a report")
        out = build_report(first, tmp_path / "reports" / "first")
        assert (out / "index.html").is_file()
        assert all(p.poll() is None for p, _ in procs)  # read while both still run
        hold.release()
        codes = [p.wait(timeout=400) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()
    assert codes == [0, 0], [
        (tmp_path / f"{n}.log").read_text()[-2000:] for n in ("first", "second")
    ]
    for name in ("first", "second"):
        table = R.read_results(tmp_path / "runs" / name / RESULTS_FILE)
        assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_study_processes(p.pid) for p, _ in procs):
        time.sleep(0.2)
    assert not [pid for p, _ in procs for pid in _study_processes(p.pid)]


class _Stop(Exception):
    """A run killed after its first epoch."""


@pytest.mark.slow
def test_a_folder_of_an_older_vae_study_resumes_and_finishes(tmp_path, capsys):
    """A study folder as vae_study wrote it when Ray Tune held the record (checkpoints in
    ``tune/trial_<id>/checkpoint_<n>/``, no ``trials/``): one configuration completed, one
    interrupted after its first epoch. The same command imports it, keeps the completed one as
    it was, continues the interrupted one from its checkpoint and asks the third."""
    from vae_study.cli import main
    from vae_study.config.study import study_from_dict
    from vae_study.config.yaml_file import write_yaml
    from vae_study.core.train import fit
    from vae_study.records.layout import StudyLayout

    raw = tiny_study(tmp_path, **{"search.num_trials": 3, "search.max_concurrent": 1})
    path = write_study(tmp_path, raw)
    study = study_from_dict(raw)
    layout = StudyLayout.of(tmp_path / "runs", "tiny")
    layout.folder.mkdir(parents=True)
    write_yaml(layout.study_file, study.to_dict())
    ot = optuna.create_study(study_name="tiny", storage=layout.storage_url)
    rows = []
    for number, (beta, stop) in enumerate(((0.5, False), (2.0, True))):
        ot.enqueue_trial({"train.beta": beta, "model.latent_dim": 2})
        trial = ot.ask()
        trial.suggest_float("train.beta", 0.1, 10.0, log=True)
        trial.suggest_categorical("model.latent_dim", [2, 4])
        cfg = study.trial_config({"train.beta": beta, "model.latent_dim": 2})
        work = tmp_path / f"work{number}"

        def kill(row, folder, stop=stop):
            if stop:
                raise _Stop

        try:
            res = fit(cfg, out_dir=work, on_epoch=kill)
        except _Stop:
            res = None
        ckpt = layout.trial_dir(f"old{number}") / "checkpoint_000001"
        ckpt.parent.mkdir(parents=True)
        (work / "checkpoint").rename(ckpt)
        row = {
            "trial_id": f"old{number}",
            "optuna_trial": number,
            "config_id": number,
            "replicate": 0,
            "member": 0,
            "seed": 0,
            "status": INTERRUPTED if stop else COMPLETED,
            "train.beta": beta,
            "model.latent_dim": 2,
            "epoch": 1 if stop else 2,
            "checkpoint": str(ckpt),
        }
        if res is not None:
            row.update(res.final)
            ot.tell(number, res.final[M.VAL_NLL])
        rows.append(row)
    R.write_results(layout.results_file, rows, ["train.beta", "model.latent_dim"])

    assert main(["run", str(path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "written by an older vae_study" in out
    table = R.read_results(layout.results_file).set_index("config_id")
    assert len(table) == 3 and set(table["status"]) == {COMPLETED}
    assert table.loc[0, "trial_id"] == "old0"  # kept as it was, not trained again
    assert table.loc[0, M.TEST_NLL] == rows[0][M.TEST_NLL]
    assert [a["from_epoch"] for a in attempts(layout.folder, 1)] == [1]  # from its checkpoint
    assert [a["from_epoch"] for a in attempts(layout.folder, 2)] == [0]
    assert optuna_states(layout.folder, "tiny") == {"COMPLETE": 3}
