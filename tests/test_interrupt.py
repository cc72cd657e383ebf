"""Ctrl-C is a pause: the study's records say so, and the same command continues it.

Slow: a real driver (``python -m vae_study run``) gets SIGINT, as a terminal's Ctrl-C sends it,
while one trial is done, another is held mid-way and a third waits for a free slot; then the same
command runs the study to the end, the waiting one trained like any other.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from study_factory import (
    Hold,
    attempts,
    read_table,
    slow_trials,
    start_driver,
    wait_for,
    write_study,
)
from vae_study.config.study import study_from_dict
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RESULTS_FILE,
    RUNNING,
    STOPPED,
)
from vae_study.records.stage import INTERRUPTED_ATTR


@pytest.mark.slow
def test_ctrl_c_pauses_the_study_and_the_same_command_continues_it(tmp_path):
    # Two trials at once on two CPUs each: one runs, the other waits for a slot.
    raw = slow_trials(
        tmp_path, epochs=20, **{"search.max_concurrent": 2, "resources.cpus_per_trial": 2}
    )
    path = write_study(tmp_path, raw)
    objective = study_from_dict(raw).search.objectives[0].metric
    folder = tmp_path / "runs" / "tiny"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    # Every trial waits after its epoch 2 (Hold), so the moment is there however fast the
    # machine: the first to start is let go once seen there, the next one stays.
    hold = Hold(tmp_path)
    hold.at(2)

    def one_done_one_mid_way():
        table = read_table(folder)
        if table is None:
            return None
        hold.let_the_first_go(table, 2, n_configs=4)
        done = table[table["status"] == COMPLETED]
        mid = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 2)]
        waiting = table[table["status"] == PENDING]
        if len(done) >= 1 and not mid.empty and not waiting.empty:
            return [int(n) for n in mid["optuna_trial"]], [int(n) for n in waiting["optuna_trial"]]
        return None

    proc, log = start_driver(tmp_path, path, "first.log", {**env, **hold.env})
    try:
        mid_way, waiting = wait_for(proc, log, one_done_one_mid_way, timeout=300, what="Ctrl-C")
        os.kill(proc.pid, signal.SIGINT)  # the driver alone, as Ray's processes block SIGINT
        time.sleep(0.5)
        second = proc.poll() is None
        if second:  # an impatient second Ctrl-C while the state is saved changes nothing
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=180)
    finally:
        hold.release()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    out = (tmp_path / "first.log").read_text()
    assert code == 130, out[-3000:]

    # One line, the last, says how to continue: the same command. Not Ray's Tuner.restore.
    hint = "vae-study: interrupted; to continue, run the same command again: "
    assert out.count(hint) == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last == f"{hint}python -m vae_study run {path} --no-report", out[-3000:]
    assert "Tuner.restore" not in out
    assert not second or "the signal is ignored until it is saved" in out

    # The records call the paused trials interrupted or pending; none stopped or failed.
    table = R.read_results(folder / RESULTS_FILE)
    statuses = table.set_index("optuna_trial")["status"].to_dict()
    assert not {STOPPED, FAILED} & set(statuses.values()), statuses
    assert set(statuses.values()) <= {COMPLETED, INTERRUPTED, PENDING}, statuses
    assert all(statuses[n] == INTERRUPTED for n in mid_way), statuses
    assert all(statuses[n] == PENDING for n in waiting), statuses  # never started
    # The pause line's counts add up to the study's 4 trials.
    counted = re.search(r"paused: (\d+) of 4 trials finished.*?; (.*?); results in", out)
    assert counted, out[-3000:]
    completed = sum(1 for s in statuses.values() if s == COMPLETED)
    assert int(counted.group(1)) == completed, out[-3000:]
    rest = dict((w, int(n)) for n, w in (x.split() for x in counted.group(2).split(", ")))
    assert rest.get(INTERRUPTED) == len(mid_way), out[-3000:]
    assert completed + sum(rest.values()) == 4, out[-3000:]

    storage = f"sqlite:///{folder / 'optuna.db'}"
    ot = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in ot.trials]
    assert optuna.trial.TrialState.FAIL not in states, states
    assert optuna.trial.TrialState.PRUNED not in states, states  # the waiting one: not pruned
    by_number = {t.number: t for t in ot.trials}
    for number in mid_way + waiting:  # still RUNNING in Optuna, marked as interrupted
        assert by_number[number].state == optuna.trial.TrialState.RUNNING
        assert by_number[number].user_attrs.get(INTERRUPTED_ATTR) is True

    # The same command again finishes the study; the interrupted trial resumes mid-way,
    # the waiting one is trained like any other.
    again = subprocess.run(
        [sys.executable, "-m", "vae_study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "done: 4 of 4 trials finished (4 completed)" in again.stdout
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    for number in mid_way:
        starts = attempts(folder, number)
        assert len(starts) == 2, starts
        assert starts[1]["from_epoch"] > 1, starts  # from its checkpoint
    for number in waiting:
        assert [a["from_epoch"] for a in attempts(folder, number)] == [0]

    # Optuna learnt every result: the same value as results.csv, trial by trial.
    ot = optuna.load_study(study_name="tiny", storage=storage)
    assert len(ot.trials) == 4
    assert {t.state for t in ot.trials} == {optuna.trial.TrialState.COMPLETE}
    by_number = {t.number: t for t in ot.trials}
    assert sorted(by_number) == sorted(int(n) for n in table["optuna_trial"])
    for row in table.to_dict("records"):
        value = by_number[int(row["optuna_trial"])].value
        assert math.isclose(value, float(row[objective]), rel_tol=1e-12), (row, value)


def test_the_command_that_continues_drops_fresh():
    from vae_study.cli import continue_command

    assert continue_command(["run", "my study.yaml", "--fresh", "--set", "name=a b"]) == (
        "python -m vae_study run 'my study.yaml' --set 'name=a b'"
    )
