"""Faults, bad input and hostile input: each is injected and its outcome asserted.

The slow ones start real Ray clusters (a driver killed at several points, a worker process
killed, a diverging trial, a node removed); the rest run in seconds without Ray.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest

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
from vae_study import files
from vae_study.cli import main
from vae_study.errors import CheckpointError
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, FAILED, RESULTS_FILE, RUNNING

REPO = Path(__file__).resolve().parents[1]


def _finish_again(tmp_path: Path, path: Path, env: dict | None = None) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vae_study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# Faults (slow: real Ray).


@pytest.mark.slow
@pytest.mark.parametrize("point", ["first_trial_starting", "mid_trial", "two_done"])
def test_driver_sigkilled_at_several_points_then_rerun(tmp_path, point):
    path = write_study(tmp_path, slow_trials(tmp_path))
    folder = tmp_path / "runs" / "tiny"
    token = tmp_path / "auth_token"
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}
    hold = Hold(tmp_path)
    if point == "mid_trial":  # one completes, the next waits at epoch 3 for the kill
        hold.at(3)

    def condition():
        table = read_table(folder)
        if table is None:
            return None
        if point == "mid_trial":
            hold.let_the_first_go(table, 3, n_configs=4)
        done = table[table["status"] == COMPLETED]
        running = table[table["status"] == RUNNING]
        if point == "first_trial_starting":
            ok = len(table) >= 1
        elif point == "mid_trial":
            ok = len(done) >= 1 and (running["epoch"].fillna(0) >= 3).any()
        else:
            ok = len(done) >= 2
        if not ok:
            return None
        return (
            done.set_index("config_id")["test/nll"].to_dict(),
            running[running["epoch"].fillna(0) >= 3]["config_id"].tolist(),
        )

    proc, log = start_driver(tmp_path, path, "first.log", {**env, **hold.env})
    try:
        done_before, interrupted = wait_for(proc, log, condition)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
        proc.wait()
        log.close()
        hold.release()
    # The token Ray uses was made by us, readable by its owner only.
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600

    _finish_again(tmp_path, path, env)
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and table["config_id"].is_unique
    assert set(table["status"]) == {COMPLETED}
    after = table.set_index("config_id")["test/nll"].to_dict()
    for cid, nll in done_before.items():  # finished configurations untouched, not re-run
        assert after[cid] == nll
        # Optuna may not have been told before the kill: then the configuration runs again,
        # finds its last epoch's checkpoint and reports its stored result; no epoch trains.
        assert all(a["from_epoch"] == 30 for a in attempts(folder, cid)[1:])
    for cid in interrupted:  # resumed from its checkpoint, not from epoch 1
        starts = attempts(folder, cid)
        assert len(starts) == 2 and starts[1]["from_epoch"] > 1, starts
    states = optuna_states(folder, "tiny")
    assert states.get("COMPLETE") == 4 and "RUNNING" not in states and "WAITING" not in states
    ot = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
    for t in ot.trials:  # optuna.db equal to results.csv, configuration by configuration
        assert t.value == table.set_index("config_id").loc[t.number, "val/nll"]


@pytest.mark.slow
def test_a_trials_worker_killed_once_resumes_from_its_checkpoint(tmp_path):
    path = write_study(tmp_path, slow_trials(tmp_path, **{"search.num_trials": 2}))
    folder = tmp_path / "runs" / "tiny"
    hold = Hold(tmp_path)
    hold.at(3)  # each trial waits after epoch 3 until its worker has been killed

    def running_trial():
        table = read_table(folder)
        if table is None:
            return None
        running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 3)]
        if running.empty:
            return None
        cid = int(running["config_id"].iloc[0])
        starts = attempts(folder, cid)
        return (cid, starts[-1]["pid"]) if starts else None

    proc, log = start_driver(tmp_path, path, "run.log", hold.env)
    try:
        cid, pid = wait_for(proc, log, running_trial)
        os.kill(pid, signal.SIGKILL)  # the trial's worker, once
        hold.release()
        assert proc.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    starts = attempts(folder, cid)
    assert starts[0]["pid"] == pid and len(starts) == 2 and starts[1]["pid"] != pid
    assert starts[1]["from_epoch"] > 1  # Ray retried it; it continued from its checkpoint
    assert table.set_index("config_id").loc[cid, "epoch"] == 30


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_study_whose_every_configuration_diverged_exits_1_in_one_line(tmp_path, capfd):
    raw = tiny_study(
        tmp_path,
        **{
            "search.num_trials": 2,
            "search.max_concurrent": 1,
            "search.space": {"train.lr": {"choice": [1.0e8, 1.0e9]}},
            "model.activation": "elu",
            "train.epochs": 2,
            "report.enabled": True,
            "report.dir": str(tmp_path / "reports"),
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 1
    err_lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("vae-study:")]
    assert len(err_lines) == 1, err_lines
    assert err_lines[0].startswith("vae-study: error: all 2 of the study's configurations failed")
    assert "the first error: training diverged" in err_lines[0]
    table = R.read_results(tmp_path / "runs" / "tiny" / RESULTS_FILE)
    assert len(table) == 2 and set(table["status"]) == {FAILED}
    assert not (tmp_path / "reports").exists()  # nothing to report


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_diverging_trial_fails_once_is_told_to_optuna_and_the_study_goes_on(tmp_path):
    raw = tiny_study(
        tmp_path,
        **{
            "search.num_trials": 3,
            "search.max_concurrent": 1,
            "search.space": {"train.lr": {"choice": [0.001, 1.0e8]}},
            "search.points_to_evaluate": [{"train.lr": 1.0e8}, {"train.lr": 0.001}],
            "model.activation": "elu",
            "train.epochs": 3,
            "report.enabled": True,
            "report.dir": str(tmp_path / "reports"),
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 3
    bad = table[table["train.lr"] == 1.0e8]
    good = table[table["train.lr"] == 0.001]
    assert len(bad) >= 1 and len(good) >= 1
    assert set(bad["status"]) == {FAILED} and set(good["status"]) == {COMPLETED}
    assert bad["error"].str.contains("training diverged").all()
    assert not bad["pareto"].any()
    for trial_id in bad["trial_id"]:  # not retried: one worker, one pass
        assert (
            len(
                {
                    r["pid"]
                    for r in json.loads(
                        "["
                        + ",".join(
                            (folder / "tune" / f"trial_{trial_id}" / "result.json")
                            .read_text()
                            .split("\n")[:-1]
                        )
                        + "]"
                    )
                }
            )
            == 1
        )
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    for n in bad["optuna_trial"]:
        assert by_number[int(n)].state == optuna.trial.TrialState.FAIL
    assert study.best_trial.params["train.lr"] == 0.001
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    assert "## Failed trials" in summary and "training diverged" in summary


@pytest.mark.slow
@pytest.mark.usefixtures("own_ray")
def test_a_worker_node_removed_mid_study_its_trials_finish_on_the_other(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from vae_study.config.study import study_from_dict
    from vae_study.study.driver import run_study

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    removed = {}

    def remove_worker_when_busy():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not removed:
            time.sleep(0.2)
            table = read_table(tmp_path / "runs" / "tiny")
            if table is None:
                continue
            on_worker = table[
                (table["node"] == worker.node_id)
                & (table["status"] == RUNNING)
                & (table["epoch"].fillna(0) >= 2)
            ]
            if not on_worker.empty:
                removed["trial"] = on_worker["trial_id"].iloc[0]
                cluster.remove_node(worker, allow_graceful=False)

    raw = slow_trials(tmp_path, **{"search.max_concurrent": 2, "ray.address": cluster.address})
    thread = threading.Thread(target=remove_worker_when_busy, daemon=True)
    thread.start()
    try:
        run_study(study_from_dict(raw), verbose=0)
    finally:
        thread.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    assert removed, "no trial ever ran on the worker node"
    table = R.read_results(tmp_path / "runs" / "tiny" / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    moved = table.set_index("trial_id").loc[removed["trial"]]
    assert moved["node"] != worker.node_id and moved["epoch"] == 30


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_rays_state_deleted_or_cut_short_changes_nothing_a_damaged_optuna_db_is_refused(
    tmp_path, capsys
):
    """Tune's experiment state is Tune's cache: cut short or deleted, the study continues
    from its record; a damaged optuna.db (the record) is one line, and nothing changes."""
    path = write_study(tmp_path, tiny_study(tmp_path, **{"search.num_trials": 2}))
    assert main(["run", str(path), "--no-report"]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    states = sorted((folder / "tune").glob("experiment_state-*.json"))
    states[-1].write_text(states[-1].read_text()[:100])
    assert main(["run", str(path), "--no-report"]) == 0
    for p in (folder / "tune").glob("experiment_state-*.json"):
        p.unlink()
    assert main(["run", str(path), "--no-report"]) == 0
    again = R.read_results(folder / RESULTS_FILE)
    assert again[["config_id", "test/nll"]].equals(table[["config_id", "test/nll"]])
    for cid in table["config_id"]:
        assert len(attempts(folder, int(cid))) == 1  # nothing trained again
    capsys.readouterr()

    db = folder / "optuna.db"
    db.write_bytes(b"this is not a database" * 100)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["run", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "optuna.db cannot be read" in err and "Traceback" not in err
    assert db.read_bytes() == b"this is not a database" * 100
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before


# ---------------------------------------------------------------------------------------
# Bad input: one message, exit 2, nothing started, no study folder (fast: no Ray).


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"train.beta": 0}, "train.beta: got 0"),
        ({"train.beta": -2}, "train.beta: got -2"),
        ({"train.k": 0}, "train.k: got 0"),
        ({"model.latent_dim": 0}, "model.latent_dim: got 0"),
        ({"resources.gpus_per_trial": 1.5}, "resources.gpus_per_trial: got 1.5"),
        ({"search.space": {}}, "search.space: empty"),
        ({"search.max_concurrent": 9}, "more than search.num_trials"),
        ({"data.dataset": "svhn"}, "data.dataset: got 'svhn'"),
        ({"search.objectives": ["test/bits"]}, "unknown metric 'test/bits'"),
        ({"search.objectives": ["test/nll"]}, "select_on_test: true"),
        ({"train.epochs": "many"}, "train.epochs: got 'many'"),
        ({"search.space": {"train.beta": {"log_uniform": [-1, 2]}}}, "log scale needs low > 0"),
        ({"name": "../../etc"}, "name: got '../../etc'"),
        ({"name": "/tmp/abs"}, "name: got '/tmp/abs'"),
        ({"trian": {}}, "unknown section 'trian'"),
    ],
)
def test_bad_study_values_are_refused_before_anything(tmp_path, capsys, over, fragment):
    raw = tiny_study(tmp_path, **over)
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_malformed_yaml_and_python_tags_are_refused(tmp_path, capsys):
    for text, fragment in (
        ("name: x\nsearch: {space: [\n", "not valid YAML at line"),
        ("name: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_missing_or_corrupt_dataset_is_found_before_any_folder_or_trial(
    tmp_path, capsys, monkeypatch
):
    import torchvision.datasets.mnist as tvm

    monkeypatch.setattr(tvm.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    raw = tiny_study(tmp_path, **{"data.root": str(tmp_path / "nowhere")})
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "dataset mnist not found" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "runs").exists()

    raw = tiny_study(tmp_path)
    gz = Path(raw["data"]["root"]) / "mnist" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:300])
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    assert "damaged" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_output_folder_that_cannot_be_written_is_reported_first(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    raw = tiny_study(tmp_path, **{"output.dir": str(blocker / "runs")})
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "cannot write the study folder" in err and "Traceback" not in err


def test_a_study_folder_symlinked_outside_output_dir_is_refused(tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    raw = tiny_study(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(outside)
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    assert "points outside output.dir" in capsys.readouterr().err
    assert not any(outside.iterdir())


def test_a_damaged_study_file_in_the_folder_is_an_error_that_overwrites_nothing(tmp_path, capsys):
    raw = tiny_study(tmp_path)
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text("name: tiny\nsearch: {space: [")
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert (folder / "study.yaml").read_text() == "name: tiny\nsearch: {space: ["


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    files.atomic_write_text(target, "old,complete\n")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        files.atomic_write_text(target, "new," * 10000)
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left


def test_a_damaged_results_table_is_a_clear_error(tmp_path):
    (tmp_path / "results.csv").write_bytes(b"\xff\xfe\x00garbage\n\x00\x00")
    with pytest.raises(CheckpointError) as err:
        R.read_results(tmp_path / "results.csv")
    assert "results.csv" in str(err.value)


# ---------------------------------------------------------------------------------------
# Security defaults (fast).


def test_token_file_is_created_owner_only_and_a_readable_one_is_flagged(tmp_path, monkeypatch):
    from vae_study.study.cluster import ensure_private_token

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert ensure_private_token() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    text = token.read_text()
    assert len(text) == 64 and int(text, 16) >= 0
    assert ensure_private_token() == token and token.read_text() == text  # kept
    token.chmod(0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        ensure_private_token()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.warns(UserWarning, match="RAY_AUTH_MODE=disabled"):
        assert ensure_private_token() is None


def test_dashboard_binds_localhost_unless_asked_and_then_warns(tmp_path, monkeypatch):
    import ray

    from vae_study.config.study import study_from_dict
    from vae_study.study import cluster as T

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        return type("Ctx", (), {"dashboard_url": f"{kwargs.get('dashboard_host')}:8265"})()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.start_ray(study_from_dict(tiny_study(tmp_path, **{"ray.dashboard": True})))
    assert seen["dashboard_host"] == "127.0.0.1" and seen["include_dashboard"] is True
    exposed = study_from_dict(
        tiny_study(tmp_path, **{"ray.dashboard": True, "ray.dashboard_host": "0.0.0.0"})
    )
    with pytest.warns(UserWarning, match="reachable by anyone"):
        T.start_ray(exposed)
    assert seen["dashboard_host"] == "0.0.0.0"


def _calls(tree: ast.AST):
    """(dotted name, call) of every call in ``tree`` whose callee is a name or attribute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
                yield ".".join(reversed(parts)), node


def _keyword(call: ast.Call, name: str):
    kw = next((k for k in call.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else kw


def unsafe_calls(source: str) -> list[str]:
    """Calls that run a shell or unpickle: subprocess with shell=True, os.system, pickle and
    yaml loads other than safe ones, torch.load without weights_only=True."""
    bad = []
    for name, call in _calls(ast.parse(source)):
        where = f"line {call.lineno}: {name}"
        if name.startswith("subprocess.") and _keyword(call, "shell") not in (None, False):
            bad.append(where + " with shell=...")
        elif name in (
            "os.system",
            "os.popen",
            "pickle.load",
            "pickle.loads",
            "yaml.load",
            "yaml.unsafe_load",
            "yaml.full_load",
            "cloudpickle.load",
            "cloudpickle.loads",
        ):
            bad.append(where)
        elif name == "torch.load" and _keyword(call, "weights_only") is not True:
            bad.append(where + " without weights_only=True")
    for node in ast.walk(ast.parse(source)):  # a loader that builds Python objects
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "yaml"
            and node.attr in _UNSAFE_LOADERS
        ):
            bad.append(f"line {node.lineno}: yaml.{node.attr}")
    return bad


_UNSAFE_LOADERS = (
    "Loader",
    "UnsafeLoader",
    "FullLoader",
    "CLoader",
    "CUnsafeLoader",
    "CFullLoader",
)


def test_the_unsafe_call_scan_finds_what_it_looks_for():
    code = textwrap.dedent("""
        subprocess.run("ls", shell=True)
        subprocess.run(["ls"], shell=False)
        os.system("ls")
        pickle.load(f)
        yaml.load(text, Loader=yaml.Loader)
        yaml.safe_load(text)
        torch.load(path)
        torch.load(path, weights_only=True)
        "pickle.load and shell=True in a string are not calls"
        class L(yaml.FullLoader): pass
        class S(yaml.SafeLoader): pass
    """)
    assert sorted(b.split(":")[0] for b in unsafe_calls(code)) == sorted(
        ["line 2", "line 4", "line 5", "line 6", "line 8", "line 6", "line 11"]
    )


def test_no_shell_and_no_pickle_loads_in_our_code():
    files = sorted((REPO / "vae_study").rglob("*.py"))
    assert len(files) > 40
    bad = {p.name: unsafe_calls(p.read_text()) for p in files}
    assert {k: v for k, v in bad.items() if v} == {}
    sources = "\n".join(p.read_text() for p in files)
    assert "torch.load(" in sources  # the scan above looked at the checkpoint reader
