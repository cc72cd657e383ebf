"""The study's record without Ray: optuna.db and the members' folders, the tables rebuilt from
them, what the searcher tells Optuna and asks for on a resume, an older vae_study's folder, and
the rule that no private attribute of Ray or Optuna is used."""

from __future__ import annotations

import ast
import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from study_factory import tiny_study
from vae_study import metrics as M
from vae_study.config.study import study_from_dict
from vae_study.records import record, tables
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    STOPPED,
    StudyLayout,
)
from vae_study.records.stage import INTERRUPTED_ATTR, search_stage, storage
from vae_study.study import legacy

REPO = Path(__file__).resolve().parents[1]
S = optuna.trial.TrialState


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(tmp_path, **over):
    return study_from_dict(tiny_study(tmp_path, **over))


def _folder(tmp_path) -> Path:
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_member(stage, cid, r, *, epochs=0, final=None, info=None, val=90.0) -> None:
    """A member's fit folder as ``fit`` leaves it: ``epochs`` lines of metrics.jsonl, then
    final.json when ``final`` is given; its member file with ``info``."""
    folder = stage.layout.record_dir(cid, r)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {M.EPOCH: e, M.VAL_NEG_ELBO: val + 10 - e, M.VAL_RATE: 1.0, M.VAL_DISTORTION: val - e}
        for e in range(1, epochs + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if final is not None:
        (folder / "final.json").write_text(json.dumps({**final, M.EPOCH: epochs}))
    if info is not None or epochs:
        attempts = [{"pid": 1, "from_epoch": 0}] if epochs else []
        record.update_info(
            stage.layout.record_file(cid, r), **{record.INFO_ATTEMPTS: attempts, **(info or {})}
        )


def _final(nll: float) -> dict:
    return {M.VAL_NLL: nll, M.TEST_NEG_ELBO: nll + 3, M.TEST_NLL: nll + 1}


# ---------------------------------------------------------------------------------------
# The views: every status from the record alone.


def test_every_status_comes_from_optuna_and_the_members_folders(tmp_path):
    study = _study(tmp_path, **{"search.replicates": 2})
    stage = search_stage(study, _folder(tmp_path))
    ot = optuna.create_study(study_name=study.name, storage=storage(stage))
    for _ in range(6):
        ot.ask({"train.beta": optuna.distributions.FloatDistribution(0.1, 10.0)})
    # 0: both seeds completed, told; 1: a seed diverged, told FAIL; 2: stopped by ASHA;
    # 3: running now; 4: trained 2 epochs when the driver stopped; 5: waiting for a slot.
    for r, nll in ((0, 80.0), (1, 82.0)):
        write_member(stage, 0, r, epochs=2, final=_final(nll))
    ot.tell(0, 81.0)
    write_member(stage, 1, 0, epochs=2, final=_final(70.0))
    write_member(stage, 1, 1, epochs=1, info={record.INFO_ERROR: "training diverged: nan"})
    ot.tell(1, state=S.FAIL)
    for r in (0, 1):
        write_member(stage, 2, r, epochs=1)
    ot.tell(2, state=S.PRUNED)
    for r in (0, 1):
        write_member(stage, 3, r, epochs=1)
        write_member(stage, 4, r, epochs=2)
    rows = tables.rebuild(study, stage, live={3})
    got = {(r["config_id"], r["replicate"]): r["status"] for r in rows}
    assert got == {
        (0, 0): COMPLETED,
        (0, 1): COMPLETED,
        (1, 0): COMPLETED,  # its own seed completed; the configuration is failed
        (1, 1): FAILED,
        (2, 0): STOPPED,
        (2, 1): STOPPED,
        (3, 0): RUNNING,
        (3, 1): RUNNING,
        (4, 0): INTERRUPTED,
        (4, 1): INTERRUPTED,
        (5, 0): PENDING,
        (5, 1): PENDING,
    }
    by = {(r["config_id"], r["replicate"]): r for r in rows}
    assert by[(1, 1)][R.ERROR_KEY] == "training diverged: nan"
    assert by[(0, 1)][M.TEST_NLL] == 83.0 and by[(0, 1)]["seed"] == 1
    assert by[(4, 0)][M.EPOCH] == 2 and by[(5, 0)][M.EPOCH] is None
    table = R.read_results(stage.layout.results_file)
    assert len(table) == 12
    from vae_study.records.replicates import read_configs  # the per-configuration view agrees

    per = read_configs(stage.layout.configs_file).set_index("config_id")
    assert per.loc[0, "status"] == COMPLETED and per.loc[0, M.VAL_NLL] == 81.0
    assert per.loc[1, "status"] == FAILED


def test_a_deleted_or_cut_short_table_is_rebuilt_whole(tmp_path):
    study = _study(tmp_path)
    stage = search_stage(study, _folder(tmp_path))
    ot = optuna.create_study(study_name=study.name, storage=storage(stage))
    for i in range(3):
        ot.ask({"train.beta": optuna.distributions.FloatDistribution(0.1, 10.0)})
        write_member(stage, i, 0, epochs=2, final=_final(80.0 + i))
        ot.tell(i, 80.0 + i)
    tables.rebuild(study, stage)
    whole = stage.layout.results_file.read_bytes()
    stage.layout.results_file.write_bytes(whole[: len(whole) // 2])  # a disk that filled up
    with pytest.raises(Exception, match="cut short"):
        R.read_results(stage.layout.results_file)
    tables.rebuild(study, stage)
    assert stage.layout.results_file.read_bytes() == whole
    stage.layout.results_file.unlink()
    stage.layout.configs_file.unlink()
    tables.rebuild(study, stage)
    assert stage.layout.results_file.read_bytes() == whole


def test_the_outcome_of_a_configuration_is_the_mean_of_all_its_seeds_or_nothing(tmp_path):
    study = _study(tmp_path, **{"search.replicates": 3})
    stage = search_stage(study, _folder(tmp_path))
    for r, nll in enumerate((80.0, 81.0, 85.0)):
        write_member(stage, 0, r, epochs=2, final=_final(nll))
    assert record.outcome(stage, 0, [M.VAL_NLL]) == ("complete", [82.0], None)
    write_member(stage, 1, 0, epochs=2, final=_final(80.0))
    write_member(stage, 1, 1, epochs=1)
    assert record.outcome(stage, 1, [M.VAL_NLL]) == ("open", None, None)  # 2 of 3 seeds
    write_member(stage, 2, 0, epochs=2, final=_final(80.0))
    write_member(stage, 2, 1, epochs=2, info={record.INFO_ERROR: "boom"})
    assert record.outcome(stage, 2, [M.VAL_NLL]) == ("fail", None, "boom")
    for r in range(3):
        write_member(stage, 3, r, epochs=2, final={**_final(80.0), M.VAL_NLL: math.nan})
    assert record.outcome(stage, 3, [M.VAL_NLL])[0] == "fail"


def test_a_damaged_member_file_is_an_error_naming_it(tmp_path):
    from vae_study.errors import CheckpointError

    path = tmp_path / "replicate_0.json"
    path.write_text('{"trial_id": "a"')
    with pytest.raises(CheckpointError, match="replicate_0.json is damaged"):
        record.read_info(path)
    assert record.read_info(tmp_path / "missing.json") == {}


# ---------------------------------------------------------------------------------------
# The searcher: what it tells, and what it asks on a resume.


class _Pause:
    requested = False


def _searcher(study, stage, pause=None, pack_size=1):
    from vae_study.config.optuna_space import encode_point, make_sampler
    from vae_study.config.packing import is_member_key
    from vae_study.study.searcher import StudySearcher

    return StudySearcher(
        study,
        stage,
        sampler=make_sampler(study.search),
        num_configs=study.search.num_trials,
        pack_size=pack_size,
        shape_keys=[p.key for p in study.search.space if not is_member_key(p.key)],
        points=[encode_point(p) for p in study.search.points_to_evaluate],
        pause=pause or _Pause(),
    )


def test_the_searcher_tells_each_configuration_from_its_record(tmp_path):
    study = _study(tmp_path, **{"search.replicates": 2, "search.num_trials": 5})
    stage = search_stage(study, _folder(tmp_path))
    pause = _Pause()
    search = _searcher(study, stage, pause)
    configs = {name: search.suggest(name) for name in "abcde"}
    cids = {name: c["_config_id"] for name, c in configs.items()}
    for r, nll in ((0, 80.0), (1, 84.0)):
        write_member(stage, cids["a"], r, epochs=2, final=_final(nll))
    write_member(stage, cids["b"], 0, epochs=1, info={record.INFO_ERROR: "nan"})
    write_member(stage, cids["c"], 0, epochs=1)  # stopped by the scheduler
    search.on_trial_complete("a", {M.VAL_NLL: 999.0})  # the record's mean, not Ray's report
    search.on_trial_complete("b")
    search.on_trial_complete("c")
    search.on_trial_complete("d", error=True)  # Ray gave up on it
    pause.requested = True  # a pause: what has not finished stays open for the next run
    search.on_trial_complete("e")
    search.on_trial_complete("unknown")  # not asked by this searcher: nothing
    ot = optuna.load_study(study_name=study.name, storage=storage(stage))
    got = {t.number: (t.state, t.value) for t in ot.trials}
    n = {k: configs[k]["_optuna_trial"] for k in configs}
    assert got[n["a"]] == (S.COMPLETE, 82.0)
    assert got[n["b"]] == (S.FAIL, None)
    assert got[n["c"]] == (S.PRUNED, None)
    assert got[n["d"]] == (S.FAIL, None)
    assert got[n["e"]] == (S.RUNNING, None)
    assert ot.trials[n["e"]].user_attrs[INTERRUPTED_ATTR] is True


def test_a_trial_that_ended_with_no_epoch_in_the_record_is_failed_not_stopped(tmp_path):
    # Ray reports the trial finished, but the record holds not one epoch of it (once, its fit
    # folders went to Ray's working directory): a failure naming that, never "stopped".
    from vae_study.study.searcher import NO_RECORD

    study = _study(tmp_path, **{"search.replicates": 2, "search.num_trials": 2})
    stage = search_stage(study, _folder(tmp_path))
    search = _searcher(study, stage)
    lost, scheduled = search.suggest("lost"), search.suggest("scheduled")
    write_member(stage, scheduled["_config_id"], 0, epochs=1)  # ASHA stopped it after one
    search.on_trial_complete("lost")
    search.on_trial_complete("scheduled")
    ot = optuna.load_study(study_name=study.name, storage=storage(stage))
    assert ot.trials[lost["_optuna_trial"]].state == S.FAIL
    assert ot.trials[scheduled["_optuna_trial"]].state == S.PRUNED
    rows = [r for r in tables.rows(study, stage) if r["config_id"] == lost["_config_id"]]
    assert len(rows) == 2
    assert all(r["status"] == FAILED and r[R.ERROR_KEY] == NO_RECORD for r in rows)


def test_a_new_searcher_resumes_running_configurations_first_then_asks_to_num_trials(tmp_path):
    study = _study(
        tmp_path,
        **{
            "search.num_trials": 4,
            "search.points_to_evaluate": [{"train.beta": 0.5, "model.latent_dim": 2}],
        },
    )
    stage = search_stage(study, _folder(tmp_path))
    first = _searcher(study, stage)
    a, b = first.suggest("a"), first.suggest("b")
    assert (a["train.beta"], a["model.latent_dim"]) == (0.5, 2)  # the point first
    write_member(stage, a["_config_id"], 0, epochs=2, final=_final(80.0))
    first.on_trial_complete("a")
    # The driver is killed: b is RUNNING in optuna.db, never told.
    second = _searcher(study, stage)
    assert second.resumed == [b["_optuna_trial"]]
    again = second.suggest("b2")
    assert again == b  # the same configuration, number and parameters
    c, d = second.suggest("c"), second.suggest("d")
    assert (c["train.beta"], c["model.latent_dim"]) != (0.5, 2)  # the point is not asked twice
    assert len({again["_optuna_trial"], c["_optuna_trial"], d["_optuna_trial"]}) == 3
    assert second.suggest("e") == "FINISHED"  # 4 configurations asked
    ot = optuna.load_study(study_name=study.name, storage=storage(stage))
    assert len(ot.trials) == 4


def test_a_resumed_search_draws_new_configurations_and_the_same_ones_each_time(tmp_path):
    # The sampler's random stream is not in the record: a resumed search seeded as the first
    # run was drew the first run's configurations again (a duplicate trial per resume).
    from vae_study.study.searcher import make_searcher

    def params(config):
        return (config["train.beta"], config["model.latent_dim"])

    def run_twice(folder_name):
        study = _study(tmp_path, **{"search.num_trials": 4, "name": folder_name})
        folder = tmp_path / "runs" / folder_name
        folder.mkdir(parents=True)
        stage = search_stage(study, folder)
        first = make_searcher(study, stage)[1]
        a = first.suggest("a")
        write_member(stage, a["_config_id"], 0, epochs=2, final=_final(80.0))
        first.on_trial_complete("a")
        second = make_searcher(study, stage)[1]  # the next run of the same command
        return params(a), params(second.suggest("b")), params(second.suggest("c"))

    a, b, c = run_twice("one")
    assert len({a, b, c}) == 3
    assert run_twice("two") == (a, b, c)  # seeded: the same pause gives the same study


def test_a_searcher_of_any_sampler_pickles_as_tune_pickles_it(tmp_path):
    """Tune pickles its search algorithm when a Tuner is made; NSGA-II's sampler holds a lock.
    The copy opens the same record and asks on from it."""
    import pickle

    study = _study(
        tmp_path,
        **{
            "search.algorithm": "nsga2",
            "search.num_trials": 3,
            "search.objectives": [{"metric": "val/rate"}, {"metric": "val/distortion"}],
        },
    )
    stage = search_stage(study, _folder(tmp_path))
    search = _searcher(study, stage)
    with pytest.raises(TypeError, match="lock"):  # why the searcher needs its own pickling
        pickle.dumps(search.study.sampler)
    first = search.suggest("a")
    copy = pickle.loads(pickle.dumps(search))
    assert copy.asked == 1 and copy.assigned == {"a": [(first["_optuna_trial"], 0)]}
    second = copy.suggest("b")
    assert second["_optuna_trial"] == first["_optuna_trial"] + 1
    ot = optuna.load_study(study_name=study.name, storage=storage(stage))
    assert len(ot.trials) == 2


def test_a_resumed_pack_comes_back_with_one_shape(tmp_path):
    study = _study(
        tmp_path,
        **{
            "search.num_trials": 7,
            "search.max_concurrent": 2,
            "search.points_to_evaluate": [
                {"train.beta": 0.5, "model.latent_dim": 4},
                {"train.beta": 2.0, "model.latent_dim": 2},
            ],
        },
    )
    stage = search_stage(study, _folder(tmp_path))
    search = _searcher(study, stage, pack_size=3)
    packs = []
    for name in "abc":
        packs.append(search.suggest(name))
    assert search.suggest("d") == "FINISHED"
    sizes = [len(p["_pack"]) for p in packs]
    assert sizes == [3, 3, 1]  # 7 configurations: the last pack holds what is left
    for pack in packs:
        assert len({c["model.latent_dim"] for c in pack["_pack"]}) == 1  # one shape a pack
    firsts = [(c["train.beta"], c["model.latent_dim"]) for p in packs for c in p["_pack"]]
    assert (0.5, 4) in firsts and (2.0, 2) in firsts
    # A resumed pack: its RUNNING configurations come back together, with their shape.
    again = _searcher(study, stage, pack_size=3)
    assert sorted(again.resumed) == list(range(7))
    resumed = again.suggest("x")["_pack"]
    assert len({c["model.latent_dim"] for c in resumed}) == 1


# ---------------------------------------------------------------------------------------
# The summary line's counts add up.


def test_the_pause_line_counts_add_up(tmp_path):
    from vae_study.study.outcome import summary_line

    study = _study(tmp_path, **{"search.num_trials": 8})
    stage = search_stage(study, _folder(tmp_path))
    rows = [
        {"config_id": 0, "replicate": 0, "status": COMPLETED},
        {"config_id": 1, "replicate": 0, "status": STOPPED},
        {"config_id": 2, "replicate": 0, "status": INTERRUPTED},
        {"config_id": 3, "replicate": 0, "status": INTERRUPTED},
        {"config_id": 4, "replicate": 0, "status": PENDING},
    ]
    line = summary_line(study, stage, rows, paused=True)
    assert "paused: 2 of 8 trials finished (1 completed, 1 stopped)" in line
    assert "2 interrupted, 4 pending" in line  # 2 + 2 + 4 = 8


# ---------------------------------------------------------------------------------------
# A folder written by an older vae_study.


def test_an_older_study_folder_is_imported_and_its_checkpoints_continue(tmp_path):
    study = _study(tmp_path)
    folder = _folder(tmp_path)
    stage = search_stage(study, folder)
    layout = StudyLayout(folder)
    ckpt = layout.trial_dir("old1") / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"weights")
    rows = [
        {"trial_id": "old0", "optuna_trial": 0, "status": COMPLETED, "config_id": 0,
         "replicate": 0, "seed": 0, "train.beta": 1.0, "model.latent_dim": 2, M.TEST_NLL: 88.5},
        {"trial_id": "old1", "optuna_trial": 1, "status": INTERRUPTED, "config_id": 1,
         "replicate": 0, "seed": 0, "train.beta": 2.0, "model.latent_dim": 2, "epoch": 1,
         "checkpoint": str(ckpt)},
    ]  # fmt: skip
    R.write_results(layout.results_file, rows, ["train.beta", "model.latent_dim"])
    ot = optuna.create_study(study_name=study.name, storage=storage(stage))
    for _ in (0, 1):
        ot.ask({"train.beta": optuna.distributions.FloatDistribution(0.1, 10.0)})
    ot.tell(0, 87.0)
    assert legacy.is_legacy(stage)
    assert legacy.import_legacy(study, stage) == 2
    assert not legacy.is_legacy(stage)
    copied = layout.record_dir(1, 0) / "checkpoint" / "state.pt"
    assert copied.read_bytes() == b"weights"  # configuration 1 continues from epoch 1
    assert ckpt.is_dir()  # the old files are left where they were
    table = tables.rebuild(study, stage)
    by = {r["config_id"]: r for r in table}
    assert by[0]["status"] == COMPLETED and by[0][M.TEST_NLL] == 88.5  # kept as it was
    assert by[0]["trial_id"] == "old0"
    assert by[1]["status"] == PENDING and by[1]["checkpoint"].endswith("replicate_0/checkpoint")


def test_an_older_folder_whose_table_is_damaged_is_refused_untouched(tmp_path):
    from vae_study.errors import StudyError

    study = _study(tmp_path)
    folder = _folder(tmp_path)
    stage = search_stage(study, folder)
    (folder / "results.csv").write_text("trial_id,optuna_trial,status,pareto\na,0,comp")
    with pytest.raises(StudyError, match="older vae_study.*--fresh"):
        legacy.import_legacy(study, stage)
    assert not StudyLayout(folder).trials_dir.exists()


# ---------------------------------------------------------------------------------------
# No private attribute of Ray or Optuna.


def _package_defined_names() -> set[str]:
    """Every underscore name the package itself defines (functions, classes, attributes)."""
    names: set[str] = set()
    for path in (REPO / "vae_study").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def private_uses(source: str, ours: set[str]) -> list[str]:
    """``x._name`` not of our own making, getattr/setattr/hasattr of a "_name" string, and
    imports from ray._private or ray.tune.execution, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = node.attr
            stdlib = isinstance(node.value, ast.Name) and node.value.id in ("os", "sys")
            if (
                name.startswith("_")
                and not name.startswith("__")
                and name not in ours
                and not stdlib
            ):
                found.append(f"line {node.lineno}: .{name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1:
                arg = node.args[1]
                text = str(getattr(arg, "value", ""))
                if isinstance(arg, ast.Constant) and text[:1] == "_" and text[:2] != "__":
                    found.append(f"line {node.lineno}: {node.func.id}(..., {arg.value!r})")
        elif isinstance(node, ast.ImportFrom | ast.Import):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            mods += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for mod in mods:
                if mod.startswith(("ray._private", "ray.tune.execution")):
                    found.append(f"line {node.lineno}: import {mod}")
    return found


def test_the_private_use_scan_finds_what_it_looks_for():
    bad = textwrap.dedent(
        """
        from ray._private import ray_constants
        from ray.tune.execution.tune_controller import TuneController
        x = searcher._ot_trials
        y = getattr(grid, "_experiment_analysis")
        setattr(study, "_storage", None)
        """
    )
    assert len(private_uses(bad, set())) == 5
    assert private_uses("self._mine = 1\nz = self._mine\n", {"_mine"}) == []


def test_no_private_attribute_of_ray_or_optuna_is_used():
    ours = _package_defined_names()
    found = {}
    for path in sorted((REPO / "vae_study").rglob("*.py")):
        uses = private_uses(path.read_text(), ours)
        if path.name == "cluster.py":  # the one loopback switch, in set_ray_multinode
            uses = [u for u in uses if "ray._private" not in u]
        if uses:
            found[str(path.relative_to(REPO))] = uses
    assert found == {}


def test_the_one_private_ray_name_is_still_there():
    """``cluster.set_ray_multinode`` sets the constant Ray reads for a loopback-only node;
    this fails when a Ray release renames or drops it."""
    from ray._private import ray_constants

    from vae_study.study.cluster import set_ray_multinode

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    before = set_ray_multinode(False)
    try:
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        set_ray_multinode(before)
    assert ray_constants.ENABLE_RAY_CLUSTER == before


# ---------------------------------------------------------------------------------------
# The fault hook and the pause's signals.


def test_the_fault_hook_kills_the_driver_at_its_nth_write_leaving_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from vae_study.files import atomic_write_text
        os.environ["VAE_STUDY_DRIVER_PID"] = str(os.getpid())
        os.environ["VAE_STUDY_FAULT_KILL_AT_WRITE"] = "driver:3"
        for i in range(5):
            atomic_write_text(Path({str(target)!r}), f"write {{i + 1}}\\n")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    assert "killing the driver at driver write 3" in proc.stdout
    assert target.read_text() == "write 2\n"  # the third never replaced it


def test_the_hold_hook_holds_only_the_listed_configurations_from_its_epoch_until_released(
    tmp_path, monkeypatch
):
    import threading

    from study_factory import Hold
    from vae_study.study import trainable

    hold = Hold(tmp_path)
    trainable.hold_point([1], 5)  # no hold file: nothing to wait for
    monkeypatch.setenv(trainable.HOLD_ENV, str(hold.path))
    trainable.hold_point([1], 5)  # set, but no file yet
    hold.at(2, configs=[1, 3])
    trainable.hold_point([1], 1)  # before its epoch
    trainable.hold_point([0, 2], 7)  # not a listed configuration
    held = threading.Thread(target=trainable.hold_point, args=([0, 1], 2), daemon=True)
    held.start()
    held.join(timeout=10 * trainable.HOLD_POLL_S)
    assert held.is_alive()  # a pack with configuration 1 in it, at epoch 2: held
    hold.release()
    held.join(timeout=30)
    assert not held.is_alive()
    hold.at(4)  # every configuration
    held = threading.Thread(target=trainable.hold_point, args=([9], 6), daemon=True)
    held.start()
    held.join(timeout=10 * trainable.HOLD_POLL_S)
    assert held.is_alive()
    hold.at(7)  # moved on: epoch 6 goes on
    held.join(timeout=30)
    assert not held.is_alive()


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_each_pause_signal_is_a_pause_with_its_exit_status(signum, status):
    from vae_study.study.pause import Pause, StudyPaused, exit_status

    stopped = []
    with Pause() as pause:
        with pytest.raises(StudyPaused) as caught:  # before Tune's loop: at once
            signal.raise_signal(signum)
        assert exit_status(caught.value) == status
        pause.phase = Pause.TUNING
        signal.signal(signal.SIGUSR1, lambda s, f: stopped.append(s))  # Tune's stop handler
        signal.raise_signal(signum)
        signal.raise_signal(signum)  # a second one is only noted
        assert pause.requested and pause.signum == signum and stopped == [signal.SIGUSR1]
    assert signal.getsignal(signum) is not pause._on_signal  # handlers put back


def test_a_pause_that_does_not_end_in_time_calls_its_deadline():
    import threading

    from vae_study.study.pause import Pause

    called = threading.Event()
    got = []
    with Pause(deadline_s=0.05, on_deadline=lambda s: (got.append(s), called.set())) as pause:
        pause.phase = Pause.TUNING
        signal.signal(signal.SIGUSR1, lambda s, f: None)
        signal.raise_signal(signal.SIGTERM)
        assert called.wait(5)
    assert got == [signal.SIGTERM]


def test_a_signal_after_the_study_is_done_pauses_nothing_and_ends_in_time(capsys):
    import threading

    from vae_study.study.pause import Pause

    called = threading.Event()
    got = []
    stopped = []
    with Pause(deadline_s=0.05, on_deadline=lambda s: (got.append(s), called.set())) as pause:
        pause.phase = Pause.DONE
        signal.signal(signal.SIGUSR1, lambda s, f: stopped.append(s))
        signal.raise_signal(signal.SIGINT)  # no StudyPaused, no stop asked of Tune
        signal.raise_signal(signal.SIGINT)
        assert not pause.requested and pause.signum == signal.SIGINT and stopped == []
        assert called.wait(5)  # a shutdown that hangs still ends
    assert got == [signal.SIGINT]
    err = capsys.readouterr().err
    assert err.count("the study is done; Ray is shutting down") == 1


def test_a_full_disk_is_told_apart_from_other_errors(tmp_path):
    import errno
    import sqlite3

    from vae_study.errors import disk_full, disk_full_error

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("optuna could not tell") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    line = str(disk_full_error(tmp_path / "runs" / "s" / "results.csv"))
    assert "MiB free" in line and "free space and run the same command" in line


def test_a_full_disk_in_tunes_own_writes_stops_the_study_without_its_traceback(tmp_path):
    """Tune logs a failed write of its experiment state with a traceback and goes on; while
    it runs, such a record stops the study as a full disk does and is not printed."""
    import errno
    import logging

    from vae_study.study.tuner import TUNE_WRITE_LOGGERS, ray_disk_full_stops

    class Stops:
        requested, errors = False, []

        def stop(self, error):
            self.errors.append(str(error))

    seen = []

    class Keep(logging.Handler):
        def emit(self, rec):
            seen.append(rec.getMessage())

    log = logging.getLogger(TUNE_WRITE_LOGGERS[0])
    handler = Keep()
    log.addHandler(handler)
    pause = Stops()
    try:
        with ray_disk_full_stops(pause, tmp_path):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                log.exception("Saving experiment state failed")
            log.error("another error, printed")
        log.exception("after the run: printed", exc_info=OSError(errno.ENOSPC, "full"))
    finally:
        log.removeHandler(handler)
    assert seen == ["another error, printed", "after the run: printed"]
    assert len(pause.errors) == 1 and "free space and run the same command" in pause.errors[0]


def test_a_member_killed_before_its_first_checkpoint_starts_over_in_a_clean_folder(tmp_path):
    """A kill between fit's first two writes leaves config.yaml without metrics.jsonl (and
    a temp file): fit refuses such a folder as not its own, so the record empties it; a
    folder with a checkpoint is kept whole."""
    from vae_study.core.run_state import check_output_folder
    from vae_study.errors import ConfigError

    study = _study(tmp_path)
    stage = search_stage(study, _folder(tmp_path))
    half = stage.layout.record_dir(0, 0)
    half.mkdir(parents=True)
    (half / "config.yaml").write_text("model: {}\n")
    (half / ".metrics.jsonl.abc123.tmp").write_text("")
    with pytest.raises(ConfigError, match="not a fit output folder"):
        check_output_folder(half)  # why the record must clear it
    write_member(stage, 0, 1, epochs=1)
    kept = stage.layout.record_dir(0, 1)
    (kept / "checkpoint").mkdir()
    (kept / "checkpoint" / "state.pt").write_bytes(b"epoch 1")
    before = sorted(p.name for p in kept.rglob("*"))
    record.clear_unstarted(stage, 0, 0)
    record.clear_unstarted(stage, 0, 1)
    record.clear_unstarted(stage, 0, 2)  # no folder: nothing
    assert not half.exists()
    check_output_folder(half)
    assert sorted(p.name for p in kept.rglob("*")) == before and "state.pt" in before


def test_a_report_the_tables_held_back_is_written_by_a_later_step_of_tune(monkeypatch):
    """results.csv shows a trial's last report within WRITE_EVERY_S even when no report
    follows it (a trial on a long epoch, or held by a test)."""
    from vae_study.study import tuner

    clock = {"now": 100.0}
    monkeypatch.setattr(tuner.time, "monotonic", lambda: clock["now"])
    tables = tuner.RecordTables(study=None, stage=None, pause=None)
    rebuilt = []
    monkeypatch.setattr(tables, "rebuild", lambda live=None: rebuilt.append(clock["now"]))
    tables.on_trial_result(0, [], None, {})  # the first report: written at once
    clock["now"] += 0.5
    tables.on_trial_result(1, [], None, {})  # too soon: held back
    tables.on_step_end(1, [])
    assert rebuilt == [100.0]
    clock["now"] += tuner.WRITE_EVERY_S
    tables.on_step_end(2, [])  # no new report, but the held one is written now
    assert rebuilt == [100.0, 102.5]
    clock["now"] += tuner.WRITE_EVERY_S
    tables.on_step_end(3, [])  # nothing held back: nothing written
    assert rebuilt == [100.0, 102.5]
