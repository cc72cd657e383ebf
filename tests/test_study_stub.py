"""The study layer's bookkeeping end to end, in milliseconds: the real driver, searcher,
trainable, record and tables, with Ray Tune's loop and training replaced by ``stub_tune``
(synthetic numbers, faults at an exact configuration and epoch). What they must leave:
results.csv and configs.csv, optuna.db reconciled with them after a run, a pause and a
resume, the confirmation's selection, and packs of several members per Ray trial. The
slow tests (test_tune, test_packs, test_confirm, test_faults) run the same contracts under
a real Ray."""

from __future__ import annotations

import json
import math
import signal

import optuna
import pytest
import stub_training
import stub_tune

from study_factory import attempts, tiny_study
from vae_study import metrics as M
from vae_study.config.study import study_from_dict
from vae_study.errors import StudyFailed
from vae_study.records import results as R
from vae_study.records import stage
from vae_study.records.layout import COMPLETED, FAILED, INTERRUPTED, RUNNING, STOPPED, StudyLayout
from vae_study.records.replicates import read_configs
from vae_study.study.pause import StudyPaused, exit_status

S = optuna.trial.TrialState

# Four configurations asked first, in this order (config ids 0-3): on val/nll the best is
# 0, then 2, 1, 3 (the stub's numbers grow with beta and latent size).
POINTS = [
    {"train.beta": 0.5, "model.latent_dim": 2},
    {"train.beta": 4.0, "model.latent_dim": 2},
    {"train.beta": 1.0, "model.latent_dim": 4},
    {"train.beta": 8.0, "model.latent_dim": 4},
]


@pytest.fixture
def script(monkeypatch, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return stub_tune.install(monkeypatch, tmp_path)


def _study(tmp_path, **over):
    keys = {"search.points_to_evaluate": POINTS, "train.epochs": 3, **over}
    return study_from_dict(tiny_study(tmp_path, **keys))


def _run(study):
    from vae_study.study.driver import run_study

    return run_study(study, verbose=0)


def _paused(study) -> StudyPaused:
    with pytest.raises(StudyPaused) as caught:
        _run(study)
    return caught.value


def _table(folder):
    return R.read_results(StudyLayout(folder).results_file)


def _member_numbers(study, row) -> dict:
    """What the stub trains for a results.csv row's configuration and seed."""
    params = {p.key: row[p.key] for p in study.search.space}
    config = study.trial_config({**params, "train.seed": int(row["seed"])})
    last = stub_training.synthetic_epoch(config, config.train.epochs)
    return {**last, **stub_training.synthetic_final(config)}


def _optuna(folder, name):
    study = optuna.load_study(study_name=name, storage=StudyLayout(folder).storage_url)
    return {t.number: t for t in study.trials}


def _statuses(folder) -> dict:
    return {(r.config_id, r.replicate): r.status for r in _table(folder).itertuples()}


# ---------------------------------------------------------------------------------------
# A run: the tables and optuna.db.


def test_a_study_records_every_member_and_tells_optuna_each_configurations_mean(
    tmp_path, script, capsys
):
    study = _study(tmp_path, **{"search.replicates": 2, "search.max_concurrent": 2})
    folder = _run(study)
    table = _table(folder)
    assert len(table) == 4 * 2
    assert set(table["status"]) == {COMPLETED}
    assert list(zip(table.config_id, table.replicate, strict=True)) == [
        (c, r) for c in range(4) for r in range(2)
    ]
    for row in table.to_dict("records"):
        assert row["seed"] == row["replicate"]  # train.seed 0 + replicate
        assert row["member"] == row["replicate"]  # one configuration per Ray trial
        assert row[M.EPOCH] == 3 and row["node"] == stub_tune.STUB_NODE
        expected = _member_numbers(study, row)
        for key in (M.VAL_NEG_ELBO, M.VAL_RATE, M.VAL_DISTORTION, M.VAL_NLL, M.TEST_NLL):
            assert row[key] == pytest.approx(expected[key], rel=1e-12), key
        assert row["checkpoint"].endswith(f"trials/{row['config_id']:04d}/"
                                          f"replicate_{row['replicate']}/checkpoint")  # fmt: skip
        assert attempts(folder, row["config_id"], row["replicate"]) == [
            {"pid": attempts(folder, 0)[0]["pid"], "from_epoch": 0}
        ]
    # The two replicates of a configuration trained in one Ray trial; the four trials apart.
    assert table.groupby("config_id")["trial_id"].nunique().eq(1).all()
    assert table["trial_id"].nunique() == 4
    # configs.csv: the means; optuna.db: each configuration told that mean, nothing left open.
    configs = read_configs(StudyLayout(folder).configs_file).set_index("config_id")
    trials = _optuna(folder, study.name)
    assert sorted(trials) == [0, 1, 2, 3]
    for cid, t in trials.items():
        mean = table[table.config_id == cid][M.VAL_NLL].mean()
        assert configs.loc[cid, M.VAL_NLL] == pytest.approx(mean, rel=1e-12)
        assert configs.loc[cid, "status"] == COMPLETED and configs.loc[cid, "n_finished"] == 2
        assert t.state == S.COMPLETE and t.value == pytest.approx(mean, rel=1e-12)
        assert (t.params["train.beta"], t.params["model.latent_dim"]) == (
            POINTS[cid]["train.beta"],
            POINTS[cid]["model.latent_dim"],
        )
    assert configs[M.VAL_NLL].idxmin() == 0
    assert list(table["pareto"]) == [True, True] + [False] * 6  # the best configuration's rows
    out = capsys.readouterr().out
    assert "done: 4 of 4 configurations finished (4 completed)" in out


@pytest.mark.parametrize(
    "replicates",
    [
        1,
        2,
    ],
)
def test_one_objective_per_epoch_is_optunas_intermediate_value_of_the_mean(
    tmp_path, script, replicates
):
    study = _study(
        tmp_path,
        **{"search.replicates": replicates, "search.objectives": [{"metric": M.VAL_NEG_ELBO}]},
    )
    folder = _run(study)
    table = _table(folder)
    for cid, t in _optuna(folder, study.name).items():
        rows = table[table.config_id == cid].to_dict("records")
        configs = [study.trial_config({**POINTS[cid], "train.seed": int(r["seed"])}) for r in rows]
        assert t.intermediate_values == {
            e: pytest.approx(
                sum(stub_training.synthetic_epoch(c, e)[M.VAL_NEG_ELBO] for c in configs)
                / replicates,
                rel=1e-12,
            )
            for e in (1, 2, 3)
        }


def test_the_tables_show_running_members_at_their_last_epoch_while_the_study_runs(
    tmp_path, script, monkeypatch
):
    from vae_study.study import tuner

    monkeypatch.setattr(tuner, "WRITE_EVERY_S", 0.0)  # every report written at once
    study = _study(tmp_path, **{"search.num_trials": 3, "search.max_concurrent": 2})
    folder = StudyLayout.of(study.output.dir, study.name).folder
    seen = {}

    def look(trial, result):
        if result[M.EPOCH] == 2 and 1 in trial.config_ids:
            table = _table(folder)
            seen.update({r.config_id: (r.status, r.epoch) for r in table.itertuples()})

    script.on_report = look
    _run(study)
    # Configurations 0 and 1 train side by side (max_concurrent 2); 2 waits for a slot and
    # is not asked yet: the table holds what optuna.db holds.
    assert seen == {0: (RUNNING, 2), 1: (RUNNING, 2)}
    assert set(_table(folder)["status"]) == {COMPLETED}


# ---------------------------------------------------------------------------------------
# A pause, and the same command again.


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_pause_leaves_its_configurations_open_and_the_same_command_finishes_them(
    tmp_path, script, capsys, signum
):
    study = _study(tmp_path, **{"search.max_concurrent": 2})
    script.pause_at, script.pause_signal = (1, 2), signum
    paused = _paused(study)
    assert paused.signum == signum and exit_status(paused) == 128 + signum
    folder = StudyLayout.of(study.output.dir, study.name).folder
    # Configurations 0 and 1 were at epoch 2 (side by side); 2 and 3 never asked.
    table = _table(folder)
    assert [(r.config_id, r.status, r.epoch) for r in table.itertuples()] == [
        (0, INTERRUPTED, 2),
        (1, INTERRUPTED, 2),
    ]
    trials = _optuna(folder, study.name)
    assert [(t.state, t.user_attrs.get(stage.INTERRUPTED_ATTR)) for t in trials.values()] == [
        (S.RUNNING, True),
        (S.RUNNING, True),
    ]
    assert "paused: 0 of 4 trials finished; 2 interrupted, 2 pending" in capsys.readouterr().out

    _run(study)  # the same command: 0 and 1 from their checkpoints first, then 2 and 3
    assert [cids for _, cids in script.starts] == [[0], [1], [0], [1], [2], [3]]
    assert "continuing configuration(s) 0, 1 from their checkpoints" in capsys.readouterr().out
    for cid in (0, 1):
        assert [a["from_epoch"] for a in attempts(folder, cid)] == [0, 2]
        lines = (StudyLayout(folder).record_dir(cid, 0) / "metrics.jsonl").read_text()
        assert [json.loads(x)[M.EPOCH] for x in lines.splitlines()] == [1, 2, 3]
    for cid in (2, 3):
        assert [a["from_epoch"] for a in attempts(folder, cid)] == [0]
    table = _table(folder)
    assert set(table["status"]) == {COMPLETED} and len(table) == 4
    trials = _optuna(folder, study.name)
    assert [t.state for t in trials.values()] == [S.COMPLETE] * 4  # no trial asked twice
    for row in table.to_dict("records"):
        assert trials[row["config_id"]].value == row[M.VAL_NLL]
        assert row[M.VAL_NLL] == pytest.approx(_member_numbers(study, row)[M.VAL_NLL], rel=1e-12)


def test_a_paused_study_run_again_after_it_finished_trains_nothing(tmp_path, script, capsys):
    study = _study(tmp_path, **{"search.num_trials": 2})
    folder = _run(study)
    before = _table(folder)
    _run(study)
    assert len(script.starts) == 2  # the second run started no trial
    assert _table(folder).equals(before)
    assert "done: 2 of 2 trials finished (2 completed)" in capsys.readouterr().out.splitlines()[-1]


def test_a_ctrl_c_while_ray_shuts_down_after_a_finished_study_pauses_nothing(
    tmp_path, script, capsys, monkeypatch
):
    from vae_study.study import driver

    study = _study(tmp_path, **{"search.num_trials": 2})
    monkeypatch.setattr(driver.ray, "is_initialized", lambda: False)  # started here
    monkeypatch.setattr(driver.ray, "shutdown", lambda: signal.raise_signal(signal.SIGINT))
    folder = _run(study)  # returns: no StudyPaused
    assert set(_table(folder)["status"]) == {COMPLETED}
    out, err = capsys.readouterr()
    assert "done: 2 of 2 trials finished (2 completed)" in out
    assert "the study is done; Ray is shutting down" in err and "interrupted" not in err


# ---------------------------------------------------------------------------------------
# Failures: a divergence, a worker that dies, a trial that keeps failing, a scheduler's stop.


def test_a_diverged_configuration_fails_once_is_told_fail_and_is_not_trained_again(
    tmp_path, script
):
    study = _study(tmp_path, **{"search.replicates": 2})
    # Configuration 1's second seed diverges at epoch 2; its first seed completes.
    script.diverge = lambda c: 2 if (c.train.beta, c.train.seed) == (4.0, 1) else None
    folder = _run(study)
    assert _statuses(folder)[(1, 0)] == COMPLETED and _statuses(folder)[(1, 1)] == FAILED
    assert {s for k, s in _statuses(folder).items() if k[0] != 1} == {COMPLETED}
    row = _table(folder).set_index(["config_id", "replicate"]).loc[(1, 1)]
    assert row[R.ERROR_KEY].startswith("training diverged: the loss is nan at epoch 2, batch 3")
    assert row[M.EPOCH] == 1  # its last good epoch
    configs = read_configs(StudyLayout(folder).configs_file).set_index("config_id")
    assert configs.loc[1, "status"] == FAILED and configs.loc[1, "n_finished"] == 1
    assert math.isnan(configs.loc[1, M.VAL_NLL])  # no mean of the survivors
    trials = _optuna(folder, study.name)
    assert trials[1].state == S.FAIL and trials[1].value is None
    assert [trials[c].state for c in (0, 2, 3)] == [S.COMPLETE] * 3
    starts = len(script.starts)
    _run(study)  # nothing left to train: the failed member is not tried again
    assert len(script.starts) == starts
    assert attempts(folder, 1, 1) == attempts(folder, 1, 0)[:1]  # one start each


def test_a_study_whose_every_configuration_diverged_fails_naming_the_first_error(tmp_path, script):
    study = _study(tmp_path, **{"search.num_trials": 2})
    script.diverge = lambda c: 1
    with pytest.raises(StudyFailed, match="all 2 of the study's configurations failed; the "
                       "first error: training diverged: the loss is nan at epoch 1"):  # fmt: skip
        _run(study)
    folder = StudyLayout.of(study.output.dir, study.name).folder
    assert [t.state for t in _optuna(folder, study.name).values()] == [S.FAIL, S.FAIL]


def test_a_worker_killed_once_continues_its_members_from_their_checkpoints(tmp_path, script):
    study = _study(tmp_path, **{"search.replicates": 2, "search.num_trials": 2})
    script.kill_at = {(0, 2)}
    folder = _run(study)
    # Ray started the trial again (the same trial id), which went on from epoch 2.
    assert [t for t, _ in script.starts] == ["stub00000", "stub00001", "stub00000"]
    for r in (0, 1):
        assert [a["from_epoch"] for a in attempts(folder, 0, r)] == [0, 2]
        lines = (StudyLayout(folder).record_dir(0, r) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)[M.EPOCH] for x in lines] == [1, 2, 3]
    assert set(_table(folder)["status"]) == {COMPLETED}
    assert [t.state for t in _optuna(folder, study.name).values()] == [S.COMPLETE] * 2


def test_a_trial_that_fails_past_its_retries_is_failed_with_its_errors_last_line(tmp_path, script):
    study = _study(tmp_path, **{"search.num_trials": 2, "train.epochs": 4})
    script.kill_at = {(0, 1), (0, 2), (0, 3)}  # three deaths: one more than max_failures
    folder = _run(study)
    row = _table(folder).set_index("config_id").loc[0]
    assert row["status"] == FAILED and row[M.EPOCH] == 3
    assert row[R.ERROR_KEY] == "RuntimeError: the trial's worker died (SIGKILL)"
    assert [a["from_epoch"] for a in attempts(folder, 0)] == [0, 1, 2]
    trials = _optuna(folder, study.name)
    assert (trials[0].state, trials[1].state) == (S.FAIL, S.COMPLETE)


def test_a_trial_the_scheduler_stops_is_stopped_and_pruned(tmp_path, script):
    study = _study(tmp_path, **{"search.replicates": 2})
    script.stop_at = {1: 1, 3: 2}
    folder = _run(study)
    table = _table(folder).set_index(["config_id", "replicate"])
    for cid, epoch in ((1, 1), (3, 2)):
        for r in (0, 1):
            assert (table.loc[(cid, r), "status"], table.loc[(cid, r), M.EPOCH]) == (
                STOPPED,
                epoch,
            )
    trials = _optuna(folder, study.name)
    assert [trials[c].state for c in range(4)] == [S.COMPLETE, S.PRUNED, S.COMPLETE, S.PRUNED]


def test_asha_stops_the_configurations_worse_than_the_first_at_its_rung(tmp_path, script):
    # One trial at a time; the first configuration is the best at every epoch, so ASHA
    # (grace period 1, reduction factor 2) stops each later one at its first rung.
    study = _study(
        tmp_path,
        **{
            "search.num_trials": 3,
            "search.points_to_evaluate": [dict(POINTS[0]), dict(POINTS[1]), dict(POINTS[3])],
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "train.epochs": 4,
        },
    )
    folder = _run(study)
    table = _table(folder).set_index("config_id")
    assert [(table.loc[c, "status"], table.loc[c, M.EPOCH]) for c in range(3)] == [
        (COMPLETED, 4),
        (STOPPED, 1),
        (STOPPED, 1),
    ]
    trials = _optuna(folder, study.name)
    assert [trials[c].state for c in range(3)] == [S.COMPLETE, S.PRUNED, S.PRUNED]


# ---------------------------------------------------------------------------------------
# The confirmation.


def _confirmed(tmp_path, **over):
    keys = {
        "search.replicates": 2,
        "search.confirm": {"top": 2, "replicates": 2},
        "search.max_concurrent": 2,
        **over,
    }
    return _study(tmp_path, **keys)


def test_the_confirmation_retrains_the_best_validation_means_with_fresh_seeds(
    tmp_path, script, capsys
):
    study = _confirmed(tmp_path)
    # Configuration 0, the best, fails one seed: the candidates are 2 (best), 1, 3.
    script.diverge = lambda c: 3 if (c.train.beta, c.train.seed) == (0.5, 0) else None
    folder = _run(study)
    confirm = StudyLayout(folder).confirm_dir
    table = _table(confirm)
    assert list(zip(table.config_id, table.replicate, table.seed, strict=True)) == [
        (1, 0, 2), (1, 1, 3), (2, 0, 2), (2, 1, 3),
    ]  # fmt: skip
    assert set(table["status"]) == {COMPLETED}
    for row in table.to_dict("records"):
        assert row[M.TEST_NLL] == pytest.approx(_member_numbers(study, row)[M.TEST_NLL])
    ot = optuna.load_study(
        study_name=f"{study.name}:confirm", storage=StudyLayout(folder).storage_url
    )
    assert [p["config_id"] for p in ot.user_attrs[stage.SELECTED_ATTR]] == [1, 2]
    assert [t.state for t in ot.trials] == [S.COMPLETE] * 2
    search = _optuna(folder, study.name)
    assert search[0].state == S.FAIL and len(search) == 4
    configs = read_configs(confirm / "configs.csv").set_index("config_id")
    assert list(configs.index) == [1, 2] and set(configs["n_finished"]) == {2}
    assert "confirmation done: 2 of 2 configurations finished" in capsys.readouterr().out


def test_a_study_paused_in_its_confirmation_continues_it_and_never_searches_again(tmp_path, script):
    study = _confirmed(tmp_path)
    script.pause_at = (2, 2, "confirm")
    _paused(study)
    folder = StudyLayout.of(study.output.dir, study.name).folder
    confirm = StudyLayout(folder).confirm_dir
    assert set(_table(folder)["status"]) == {COMPLETED}
    assert set(_table(confirm)["status"]) == {INTERRUPTED}
    searched = len(script.starts)
    search_before = {c: attempts(folder, c) for c in range(4)}
    _run(study)
    assert [cids for _, cids in script.starts[searched:]] == [[0], [2]]  # confirmation only
    assert {c: attempts(folder, c) for c in range(4)} == search_before
    assert [a["from_epoch"] for a in attempts(confirm, 2, 1)] == [0, 2]
    assert set(_table(confirm)["status"]) == {COMPLETED}
    assert len(_optuna(folder, study.name)) == 4


# ---------------------------------------------------------------------------------------
# Packs: several configurations x replicates in one Ray trial.


def test_a_pack_holds_one_shape_reports_every_member_and_each_configuration_is_told_alone(
    tmp_path, script
):
    study = _study(
        tmp_path,
        **{"search.replicates": 2, "resources.configs_per_trial": 2, "search.max_concurrent": 1},
    )
    # Configuration 3's first seed diverges: 3 fails, its pack mate 2 completes.
    script.diverge = lambda c: 2 if (c.train.beta, c.train.seed) == (8.0, 0) else None
    folder = _run(study)
    table = _table(folder)
    assert len(table) == 8
    packs = table.groupby("trial_id")
    assert packs.ngroups == 2
    for _, pack in packs:
        assert sorted(pack["member"]) == [0, 1, 2, 3]  # 2 configurations x 2 seeds
        assert pack["model.latent_dim"].nunique() == 1  # a shape key: one value a pack
        assert set(pack["fusion"]) == {"stacked"}
    assert [cids for _, cids in script.starts] == [[0, 1], [2, 3]]
    statuses = _statuses(folder)
    assert statuses.pop((3, 0)) == FAILED and set(statuses.values()) == {COMPLETED}
    trials = _optuna(folder, study.name)
    assert [trials[c].state for c in range(4)] == [S.COMPLETE] * 3 + [S.FAIL]
    for cid in range(3):
        mean = table[table.config_id == cid][M.VAL_NLL].mean()
        assert trials[cid].value == pytest.approx(mean, rel=1e-12)


def test_a_pack_paused_or_killed_resumes_every_member_from_its_checkpoint(tmp_path, script):
    study = _study(
        tmp_path,
        **{"search.replicates": 2, "resources.configs_per_trial": 2, "search.max_concurrent": 1},
    )
    script.kill_at = {(1, 1)}  # the first pack's worker dies after epoch 1
    script.pause_at = (3, 2)  # the second pack is paused after epoch 2
    _paused(study)
    folder = StudyLayout.of(study.output.dir, study.name).folder
    statuses = _statuses(folder)
    assert {statuses[(c, r)] for c in (0, 1) for r in (0, 1)} == {COMPLETED}
    assert {statuses[(c, r)] for c in (2, 3) for r in (0, 1)} == {INTERRUPTED}
    _run(study)
    for c, r in statuses:
        froms = [a["from_epoch"] for a in attempts(folder, c, r)]
        assert froms == ([0, 1] if c < 2 else [0, 2]), (c, r)
    assert set(_table(folder)["status"]) == {COMPLETED}
    assert [t.state for t in _optuna(folder, study.name).values()] == [S.COMPLETE] * 4
