"""Seed replicates and packs in a study: a Ray trial trains its configurations x their
replicates as one pack (``fused.fit_pack``), reports each member and each configuration's
replicate mean, and the searcher asks and tells Optuna one configuration at a time.

The fast tests drive the trainable's pack (``trainable.train_pack``) with Ray's ``tune``
replaced by a recorder, the searcher without Ray, and the results table from a record made by
hand; the slow ones run real studies under a local Ray."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import optuna
import pytest

from study_factory import (
    Hold,
    attempts,
    optuna_states,
    read_table,
    slow_trials,
    small_run_config,
    start_driver,
    tiny_study,
    wait_for,
    write_study,
)
from vae_study import metrics as M
from vae_study.config.packing import configs_per_trial
from vae_study.config.run import replace_keys
from vae_study.config.study import study_from_dict
from vae_study.errors import ConfigError
from vae_study.records import results as R
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RESULTS_FILE,
    RUNNING,
    STOPPED,
    StudyLayout,
)
from vae_study.records.replicates import read_configs
from vae_study.study import trainable

# ---------------------------------------------------------------------------------------
# The study file.


def _refused(tmp_path, fragment: str, **over) -> None:
    with pytest.raises(ConfigError, match=fragment):
        study_from_dict(tiny_study(tmp_path, **over))


def test_replicates_and_configs_per_trial_are_checked(tmp_path):
    study = study_from_dict(tiny_study(tmp_path))
    assert study.search.replicates == 1 and study.resources.configs_per_trial == 1
    assert "replicates" not in study.to_dict()["search"]  # folders made before it resume
    again = study_from_dict(tiny_study(tmp_path, **{"search.replicates": 3}))
    assert study_from_dict(again.to_dict()) == again
    _refused(
        tmp_path, r"^search.replicates: got 0, expected an integer", **{"search.replicates": 0}
    )
    _refused(
        tmp_path,
        r"^resources.configs_per_trial: got 0, expected an integer .* or auto",
        **{"resources.configs_per_trial": 0},
    )
    seeds = {"train.seed": {"int": [0, 9]}, "train.beta": {"uniform": [0.5, 2]}}
    _refused(
        tmp_path,
        r"^search.space.train.seed: searched with search.replicates: 2; .*train.seed \+ 0, 1",
        **{"search.replicates": 2, "search.space": seeds},
    )
    study_from_dict(tiny_study(tmp_path, **{"search.space": seeds}))  # one replicate: fine
    asha = {"type": "asha", "grace_period": 1}
    _refused(
        tmp_path,
        r"^resources.configs_per_trial: got 2, but ASHA .* per configuration",
        **{"resources.configs_per_trial": 2, "scheduler": asha},
    )
    # Conv (and user) models pack too: fit_pack runs them through torch.func.vmap, or one
    # after another where vmap cannot (fused.fusion_mode).
    conv = {"model.arch": "conv", "model.hidden": [32]}
    assert study_from_dict(tiny_study(tmp_path, **conv, **{"search.replicates": 2}))
    assert study_from_dict(tiny_study(tmp_path, **conv, **{"resources.configs_per_trial": 2}))
    _refused(
        tmp_path,
        r"^resources.configs_per_trial: got 2, but the grid sampler",
        **{
            "resources.configs_per_trial": 2,
            "search.algorithm": "grid",
            "search.space": {"train.beta": {"choice": [0.5, 1.0]}},
            "search.num_trials": 2,
        },
    )
    _refused(
        tmp_path,
        r"^resources.configs_per_trial: got 2, but .* varies none of those",
        **{
            "resources.configs_per_trial": 2,
            "search.space": {"model.latent_dim": {"choice": [2, 4]}},
        },
    )


def test_asha_is_refused_for_replicates_that_train_one_after_another(tmp_path):
    """ASHA acts on the replicate mean each epoch; members vmap cannot run train one after
    another and have no such mean: refused before Ray starts or the folder exists."""
    from vae_study.study.driver import run_study

    asha = {"type": "asha", "grace_period": 1}
    user = {"model.arch": "user_models:DropoutVAE", "search.space": _beta_only()}
    study = study_from_dict(
        tiny_study(tmp_path, **user, **{"search.replicates": 2, "scheduler": asha})
    )
    with pytest.raises(ConfigError, match=r"^scheduler.type: asha with search.replicates: 2"):
        run_study(study)
    assert not (tmp_path / "runs" / "tiny").exists()


def _beta_only() -> dict:
    return {"train.beta": {"log_uniform": [0.1, 10.0]}}


def test_auto_is_one_on_a_cpu_and_about_32_members_on_a_gpu(tmp_path):
    def resolved(gpu: bool, **over) -> int:
        raw = tiny_study(tmp_path, **{"resources.configs_per_trial": "auto", **over})
        return configs_per_trial(study_from_dict(raw), gpu=gpu)

    many = {"search.num_trials": 100}
    assert resolved(False, **many) == 1
    assert resolved(True, **many) == 32
    assert resolved(True, **many, **{"search.replicates": 5}) == 6  # 32 // 5 configurations
    assert resolved(True, **many, **{"search.replicates": 64}) == 1
    assert resolved(True) == 4  # never more than the study's configurations
    asha = {"scheduler": {"type": "asha", "grace_period": 1}}
    assert resolved(True, **many, **asha) == 1  # ASHA decides per trial: one configuration


def test_the_member_keys_are_those_of_fit_pack():
    from vae_study.config import packing as search_config
    from vae_study.core import fused

    assert search_config.MEMBER_KEYS == fused.MEMBER_KEYS
    assert search_config.MEMBER_PREFIXES == fused.MEMBER_PREFIXES


# ---------------------------------------------------------------------------------------
# The trainable's members and their reports.


def _pack_config(*betas, latent=2, first=0, **extra):
    return {
        R.PACK_KEY: [
            {"train.beta": b, "model.latent_dim": latent, R.OPTUNA_TRIAL_KEY: first + i}
            for i, b in enumerate(betas)
        ],
        **extra,
    }


def test_replicate_seeds_are_paired_across_configurations(tmp_path):
    study = study_from_dict(tiny_study(tmp_path, **{"search.replicates": 3, "train.seed": 7}))
    members = trainable.member_configs(_pack_config(0.5, 2.0), study, [], False)
    assert [m.train.seed for m in members] == [7, 8, 9, 7, 8, 9]
    assert [m.train.beta for m in members] == [0.5] * 3 + [2.0] * 3
    assert {m.train.device for m in members} == {"cpu"}
    # The confirmation stage: its own replicate count and seeds past the search's.
    confirm = _pack_config(0.5, **{R.TRIAL_REPLICATES_KEY: 2, R.SEED_OFFSET_KEY: 3})
    assert [m.train.seed for m in trainable.member_configs(confirm, study, [], False)] == [10, 11]
    flat = {"train.beta": 0.5, "model.latent_dim": 4, R.OPTUNA_TRIAL_KEY: 5}
    members = trainable.member_configs(flat, study, [], False)
    assert [(m.train.seed, m.model.latent_dim) for m in members] == [(7, 4), (8, 4), (9, 4)]


class _Tune:
    """Ray's ``tune`` as the trainable uses it, recording each report."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.reports: list[dict] = []
        self.stop_after = stop_after

    def report(self, metrics: dict) -> None:
        self.reports.append(dict(metrics))
        if self.stop_after is not None and len(self.reports) >= self.stop_after:
            raise _Killed


class _Killed(Exception):
    """The trial's process ends here (a worker killed right after a report)."""


def _stage(tmp_path, name, replicates):
    from vae_study.records.stage import Stage

    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return Stage(folder, folder, name, replicates)


def _ids(n, per_config):
    return [(j // per_config, j % per_config) for j in range(n)]


def _run_pack(monkeypatch, tmp_path, name, members, per_config, stop_after=None):
    """train_pack into the record of the stage ``name`` (a later call with the same name
    continues it, as a restarted trial does)."""
    recorder = _Tune(stop_after)
    monkeypatch.setattr(trainable, "tune", recorder)
    stage = _stage(tmp_path, name, per_config)
    try:
        trainable.train_pack(
            members, per_config, None, stage, _ids(len(members), per_config), {"node": "n"}, "t"
        )
    except _Killed:
        pass
    recorder.stage = stage
    return recorder


def _replicates(root, config_specs, r, **keys):
    """Members of configurations (beta, lr) x r replicates, configuration-major."""
    return [
        small_run_config(
            root,
            **{
                "data.binarize": "dynamic",  # a likelihood: val/nll and test/nll
                "train.beta": beta,
                "train.lr": lr,
                "train.seed": s,
                "train.epochs": 3,
                **keys,
            },
        )
        for beta, lr in config_specs
        for s in range(r)
    ]


def test_a_two_replicate_trial_reports_its_members_and_their_mean_once_per_epoch(
    mnist_root, tmp_path, monkeypatch
):
    members = _replicates(mnist_root, [(0.5, 1e-3)], 2)
    rec = _run_pack(monkeypatch, tmp_path, "a", members, per_config=2)
    assert [r[M.EPOCH] for r in rec.reports] == [1, 2, 3]  # once per epoch, not per member
    for report in rec.reports:
        for metric in (M.VAL_NEG_ELBO, M.VAL_RATE, M.TRAIN_LOSS):
            values = [report[R.member_key(j, metric)] for j in (0, 1)]
            assert values[0] != values[1]  # two seeds, two runs
            assert report[metric] == pytest.approx(np.mean(values), rel=1e-12)
    last = rec.reports[-1]
    for metric in (M.VAL_NLL, M.TEST_NLL, M.TEST_RATE):
        values = [last[R.member_key(j, metric)] for j in (0, 1)]
        assert last[metric] == pytest.approx(np.mean(values), rel=1e-12)
    assert not any(k.startswith(R.CONFIG_PREFIX) for k in last)  # one configuration: top level
    assert R.DIVERGED_KEY not in last
    # Each member's folder in the record is a fit folder of its own seed.
    from vae_study.core import checkpoint as ckpt
    from vae_study.records import record

    for j in (0, 1):
        state = ckpt.load(rec.stage.layout.record_dir(0, j) / "checkpoint")
        assert state.epoch == 3 and state.config["train"]["seed"] == j
        assert record.read_info(rec.stage.layout.record_file(0, j))["fusion"] == "stacked"


def test_replicates_trained_one_after_another_report_every_member_epoch_without_a_false_mean(
    mnist_root, tmp_path, monkeypatch
):
    """A user model vmap cannot run trains its replicates one after another: every member
    epoch is reported (its checkpoint written: a kill loses at most one member epoch), a member not
    yet started is never called diverged, and the mean exists only where every replicate is
    at the reported epoch."""
    members = _replicates(mnist_root, [(0.5, 1e-3)], 2, **{"model.arch": "user_models:DropoutVAE"})
    rec = _run_pack(monkeypatch, tmp_path, "seq", members, per_config=2)
    reports = rec.reports
    assert {r[R.FUSION_KEY] for r in reports} == {"sequential"}
    assert len(reports) == 2 * 3 + 1
    for report in reports[:-1]:
        assert not any(k.endswith(R.DIVERGED_KEY) for k in report)
        at = [report.get(R.member_key(j, M.EPOCH)) for j in (0, 1)]
        if at[0] == at[1] == report[M.EPOCH]:
            assert report[M.VAL_NEG_ELBO] == pytest.approx(
                np.mean([report[R.member_key(j, M.VAL_NEG_ELBO)] for j in (0, 1)])
            )
        else:  # one replicate ahead of the other: no mean to act on
            assert M.VAL_NEG_ELBO not in report
    assert [r.get(R.member_key(1, M.EPOCH)) for r in reports[:3]] == [None, None, None]
    last = reports[-1]
    values = [last[R.member_key(j, M.VAL_NLL)] for j in (0, 1)]
    assert last[M.VAL_NLL] == pytest.approx(np.mean(values), rel=1e-12)


def test_a_diverged_replicate_fails_its_configuration_and_its_pack_mates_go_on(
    mnist_root, tmp_path, monkeypatch
):
    members = _replicates(mnist_root, [(1.0, 1e-3), (2.0, 1e-3)], 2, **{"model.activation": "elu"})
    members[1] = replace_keys(members[1], {"train.lr": 1.0e8})  # configuration 0, replicate 1
    rec = _run_pack(monkeypatch, tmp_path, "d", members, per_config=2)
    last = rec.reports[-1]
    assert last[R.member_key(1, R.DIVERGED_KEY)] == 1
    assert "training diverged" in last[R.member_key(1, R.ERROR_KEY)]
    for j in (0, 2, 3):  # the others finished, with their test numbers
        assert R.member_key(j, R.DIVERGED_KEY) not in last
        assert math.isfinite(last[R.member_key(j, M.TEST_NLL)])
    assert last[R.config_key(0, R.DIVERGED_KEY)] == 1
    assert R.config_key(0, M.VAL_NLL) not in last  # no objective for the configuration
    assert last[R.config_key(1, M.VAL_NLL)] == pytest.approx(
        np.mean([last[R.member_key(j, M.VAL_NLL)] for j in (2, 3)]), rel=1e-12
    )
    # What the searcher tells Optuna, and what results.csv and configs.csv say: from the
    # record the pack wrote (the diverged member's file holds its reason).
    from vae_study.records import record, tables
    from vae_study.records.stage import Stage
    from vae_study.study.searcher import StudySearcher

    study = study_from_dict(tiny_study(tmp_path, **{"search.replicates": 2}))
    stage = Stage(rec.stage.folder, rec.stage.folder, study.name, 2)
    assert "training diverged" in record.read_member(stage, 0, 1).error
    search = StudySearcher(
        study, stage, sampler=optuna.samplers.RandomSampler(0), num_configs=2, pack_size=2
    )
    pack = search.suggest("t0")[R.PACK_KEY]
    assert [c[R.CONFIG_ID_KEY] for c in pack] == [0, 1]
    search.on_trial_complete("t0", last)
    S = optuna.trial.TrialState
    assert [(t.state, t.value) for t in search.study.trials] == [
        (S.FAIL, None),
        (S.COMPLETE, pytest.approx(last[R.config_key(1, M.VAL_NLL)], rel=1e-12)),
    ]
    rows = tables.rebuild(study, stage)
    table = R.read_results(stage.layout.results_file)
    assert list(table["status"]) == [COMPLETED, FAILED, COMPLETED, COMPLETED]
    assert "training diverged" in table["error"][1] and len(rows) == 4
    configs = read_configs(stage.layout.configs_file)
    assert list(configs["status"]) == [FAILED, COMPLETED]
    assert list(configs["n_finished"]) == [1, 2]  # R - 1 of the failed one finished


def test_a_pack_killed_after_an_epoch_resumes_every_member_exactly(
    mnist_root, tmp_path, monkeypatch
):
    members = _replicates(mnist_root, [(0.5, 1e-3), (2.0, 3e-3)], 2)
    straight = _run_pack(monkeypatch, tmp_path, "s", members, per_config=2)
    killed = _run_pack(monkeypatch, tmp_path, "k", members, per_config=2, stop_after=1)
    assert [r[M.EPOCH] for r in killed.reports] == [1]
    resumed = _run_pack(monkeypatch, tmp_path, "k", members, per_config=2)  # the same record
    assert [r[M.EPOCH] for r in resumed.reports] == [2, 3]
    skip = ("time", "node")
    for a, b in zip(straight.reports[1:], resumed.reports, strict=True):
        keys = [k for k in a if not any(s in k for s in skip)]
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}  # to the bit


# ---------------------------------------------------------------------------------------
# The searcher: P configurations per Ray trial, shape keys held, each told on its own.


def test_the_searcher_asks_packs_that_never_mix_shape_keys(tmp_path):
    from vae_study.records import record
    from vae_study.records.stage import search_stage
    from vae_study.study.searcher import make_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = tiny_study(
        tmp_path,
        **{
            "search.num_trials": 11,
            "search.algorithm": "random",
            "search.space": {
                "train.beta": {"log_uniform": [0.1, 10.0]},
                "model.latent_dim": {"choice": [2, 3, 4, 5, 6, 7]},
                "model.hidden": {"choice": [[16], [32]]},
            },
            "search.points_to_evaluate": [
                {"model.latent_dim": 3, "train.beta": 0.5},
                {"train.beta": 0.25},
                {"model.latent_dim": 5, "train.beta": 4.0},
            ],
            "resources.configs_per_trial": 3,
        },
    )
    study = study_from_dict(raw)
    folder = tmp_path / "s"
    folder.mkdir()
    stage = search_stage(study, folder)
    _, search = make_searcher(study, stage, pack_size=configs_per_trial(study, gpu=False))
    packs = [search.suggest(f"t{i}") for i in range(5)]
    assert packs[4] == "FINISHED"  # 11 configurations: packs of 3, 3, 3 and 2
    packs = [p[R.PACK_KEY] for p in packs[:4]]
    assert [len(p) for p in packs] == [3, 3, 3, 2]
    latents, hidden = set(), set()
    for pack in packs:
        assert len({c["model.latent_dim"] for c in pack}) == 1  # one shape per pack
        assert len({c["model.hidden"] for c in pack}) == 1
        assert len({c["train.beta"] for c in pack}) == len(pack)  # members differ
        latents.add(pack[0]["model.latent_dim"])
        hidden.add(pack[0]["model.hidden"])
    assert len(latents) > 1  # the sampler still chooses the shape of each pack
    # Points to evaluate are configurations: the first two share latent_dim 3 in one pack,
    # the third (latent 5) starts the next.
    assert packs[0][0]["model.latent_dim"] == 3 and packs[0][0]["train.beta"] == 0.5
    assert packs[0][1]["train.beta"] == 0.25 and packs[0][1]["model.latent_dim"] == 3
    assert packs[1][0]["model.latent_dim"] == 5 and packs[1][0]["train.beta"] == 4.0
    numbers = [c[R.OPTUNA_TRIAL_KEY] for p in packs for c in p]
    assert sorted(numbers) == list(range(11))
    ot = search.study
    for pack in packs:  # Optuna's record of each configuration is what the pack trains
        for c in pack:
            assert ot.trials[c[R.OPTUNA_TRIAL_KEY]].params == {
                k: v for k, v in c.items() if not k.startswith("_")
            }
    # Each configuration is told its own result, from its members in the record.
    first = [c[R.CONFIG_ID_KEY] for c in packs[0]]
    for cid, (final, info) in zip(
        first,
        [({M.VAL_NLL: 80.0, M.TEST_NEG_ELBO: 82.0}, {}), (None, {record.INFO_ERROR: "nan"}),
         (None, {})],  # the third: stopped by the scheduler before its objective existed
        strict=True,
    ):  # fmt: skip
        out = stage.layout.record_dir(cid, 0)
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text(json.dumps({M.EPOCH: 1}) + "\n")
        if final:
            (out / "final.json").write_text(json.dumps(final))
        record.update_info(stage.layout.record_file(cid, 0), **info)
    search.on_trial_complete("t0", {R.config_key(0, M.VAL_NLL): 1.0})
    search.on_trial_complete("t0", {R.config_key(0, M.VAL_NLL): 1.0})  # once only
    S = optuna.trial.TrialState
    told = [ot.trials[c[R.OPTUNA_TRIAL_KEY]] for c in packs[0]]
    assert [(t.state, t.value) for t in told] == [
        (S.COMPLETE, 80.0),
        (S.FAIL, None),
        (S.PRUNED, None),
    ]


# ---------------------------------------------------------------------------------------
# The results table.


def _record_member(stage, cid, r, final):
    from vae_study.records import record

    out = stage.layout.record_dir(cid, r)
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text(json.dumps({M.EPOCH: 2}) + "\n")
    (out / "final.json").write_text(json.dumps({**final, M.EPOCH: 2}))
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.pt").write_bytes(b"x")
    record.update_info(stage.layout.record_file(cid, r), trial_id=f"t{cid}", member=r)


def _asked(stage, study, n):
    ot = optuna.create_study(study_name=study.name, storage=f"sqlite:///{stage.root}/optuna.db")
    for i in range(n):
        ot.enqueue_trial({"train.beta": 0.5 + i, "model.latent_dim": 2})
        trial = ot.ask()
        trial.suggest_float("train.beta", 0.1, 10.0, log=True)
        trial.suggest_categorical("model.latent_dim", [2, 4])
    return ot


def test_results_have_a_row_per_member_and_configs_agree_with_numpy(tmp_path):
    from vae_study.records import tables
    from vae_study.records.stage import search_stage

    study = study_from_dict(tiny_study(tmp_path, **{"search.replicates": 3}))
    stage = search_stage(study, tmp_path)
    _asked(stage, study, 2)
    rng = np.random.default_rng(0)
    values = {}
    for i in range(2):
        values[i] = rng.normal(90, 2, size=(3, 2))
        for r in range(3):
            nll, rate = values[i][r]
            final = {M.VAL_NLL: nll, M.TEST_RATE: rate, M.TEST_NEG_ELBO: nll + 1}
            _record_member(stage, i, r, final)
    tables.rebuild(study, stage)
    table = R.read_results(tmp_path / RESULTS_FILE)
    assert len(table) == 6 and list(table["member"]) == [0, 1, 2] * 2
    assert list(table["replicate"]) == [0, 1, 2] * 2 and list(table["seed"]) == [0, 1, 2] * 2
    assert list(table["config_id"]) == [0] * 3 + [1] * 3
    assert list(table["optuna_trial"]) == [0] * 3 + [1] * 3
    assert list(table["train.beta"]) == [0.5] * 3 + [1.5] * 3
    assert table["checkpoint"][4] == str(stage.layout.record_dir(1, 1) / "checkpoint")
    configs = read_configs(tmp_path / "configs.csv")
    for i in range(2):
        row = configs[configs["config_id"] == i].iloc[0]
        for col, metric in enumerate((M.VAL_NLL, M.TEST_RATE)):
            x = values[i][:, col]
            assert row[metric] == pytest.approx(np.mean(x), rel=1e-12)
            assert row[f"{metric}_se"] == pytest.approx(np.std(x, ddof=1) / np.sqrt(3), rel=1e-9)
        assert row["n_finished"] == 3 and row["status"] == COMPLETED
    best = int(np.argmin([np.mean(values[i][:, 0]) for i in range(2)]))
    assert list(table["pareto"]) == [i == best for i in range(2) for _ in range(3)]


def test_one_replicate_keeps_one_row_per_trial_and_no_standard_error(tmp_path):
    from vae_study.records import tables
    from vae_study.records.stage import search_stage

    study = study_from_dict(tiny_study(tmp_path))
    stage = search_stage(study, tmp_path)
    _asked(stage, study, 4)
    _record_member(stage, 3, 0, {M.VAL_NLL: 88.0, M.TEST_NEG_ELBO: 91.0, M.TEST_RATE: 5.0})
    tables.rebuild(study, stage)
    table = R.read_results(tmp_path / RESULTS_FILE)
    assert len(table) == 4
    row = table.iloc[3]
    assert (row["member"], row["config_id"], row["replicate"], row["seed"]) == (0, 3, 0, 0)
    assert row["checkpoint"] == str(stage.layout.record_dir(3, 0) / "checkpoint")
    assert row[M.VAL_NLL] == 88.0
    configs = read_configs(tmp_path / "configs.csv")
    assert configs[M.VAL_NLL][3] == 88.0 and math.isnan(configs[f"{M.VAL_NLL}_se"][3])
    text = (tmp_path / "configs.csv").read_text().splitlines()
    header = text[0].split(",")
    assert text[4].split(",")[header.index(f"{M.VAL_NLL}_se")] == ""  # absent, not 0


# ---------------------------------------------------------------------------------------
# Real studies (slow: a local Ray).


def _member_history(folder: Path, config_id: int, replicate: int) -> list[dict]:
    """A member's epochs, from its fit folder in the record."""
    from vae_study.records.folder import read_history

    return read_history(StudyLayout(folder).record_dir(config_id, replicate) / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_replicated_packed_study_holds_one_optuna_trial_per_configuration(tmp_path):
    from vae_study.cli import main
    from vae_study.core import checkpoint as ckpt
    from vae_study.records.folder import load_folder

    raw = tiny_study(
        tmp_path,
        **{
            "search.replicates": 2,
            "search.num_trials": 5,
            "search.max_concurrent": 1,
            "resources.configs_per_trial": 3,
            "search.space": {
                "train.beta": {"log_uniform": [0.1, 10.0]},
                "model.latent_dim": {"choice": [2, 3, 4]},
            },
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 10 and set(table["status"]) == {COMPLETED}
    assert set(table[R.FUSION_KEY]) == {"stacked"}  # MLP members: one batched model
    assert table.groupby("trial_id").size().sort_values().tolist() == [4, 6]  # packs of 2, 3
    for _, trial in table.groupby("trial_id"):  # packs never mix shape keys
        assert trial["model.latent_dim"].nunique() == 1
    assert (table.groupby("config_id").size() == 2).all()  # R rows per configuration
    for _, config in table.groupby("config_id"):
        assert sorted(config["replicate"]) == [0, 1] and sorted(config["seed"]) == [0, 1]
    configs = read_configs(folder / "configs.csv")
    assert len(configs) == 5
    study = optuna.load_study(study_name="tiny", storage=StudyLayout(folder).storage_url)
    assert optuna_states(folder, "tiny") == {"COMPLETE": 5}
    for t in study.trials:
        members = table[table["config_id"] == t.number]
        x = members[M.VAL_NLL].to_numpy()
        assert t.value == pytest.approx(np.mean(x), rel=1e-9)  # Optuna holds the mean
        row = configs[configs["config_id"] == t.number].iloc[0]
        assert row[M.VAL_NLL] == pytest.approx(np.mean(x), rel=1e-9)
        assert row[f"{M.VAL_NLL}_se"] == pytest.approx(np.std(x, ddof=1) / np.sqrt(2), rel=1e-6)
        assert t.params["train.beta"] == pytest.approx(members["train.beta"].iloc[0])
    # Every member's checkpoint is found, holds its own seed, and has its learning curve.
    for trial in load_folder(folder).trials:
        state = ckpt.load(trial.checkpoint)
        assert state.config["train"]["seed"] == int(trial.metrics["seed"])
        assert state.config["train"]["beta"] == pytest.approx(trial.metrics["train.beta"])
        assert [h[M.EPOCH] for h in trial.history] == [1, 2]
        assert trial.history[-1][M.VAL_NEG_ELBO] == pytest.approx(trial.metrics[M.VAL_NEG_ELBO])


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_one_configuration_trial_reports_the_replicate_mean_at_the_top(tmp_path):
    from vae_study.cli import main

    raw = tiny_study(tmp_path, **{"search.replicates": 2, "search.num_trials": 2})
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    for trial_id in set(table["trial_id"]):
        lines = StudyLayout(folder).result_file(trial_id).read_text().splitlines()
        reports = [json.loads(line) for line in lines]
        assert [r[M.EPOCH] for r in reports] == [1, 2]
        for r in reports:  # what ASHA and Optuna see: the mean of the two seeds
            for metric in (M.VAL_NEG_ELBO, *([M.VAL_NLL, M.TEST_NLL] if r[M.EPOCH] == 2 else ())):
                members = [r[R.member_key(j, metric)] for j in (0, 1)]
                assert r[metric] == pytest.approx(np.mean(members), rel=1e-12)
    assert optuna_states(folder, "tiny") == {"COMPLETE": 2}


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_driver_killed_mid_study_resumes_every_member_exactly(tmp_path):
    """Two configurations (points to evaluate) x two replicates, SIGKILL mid-trial, the same
    command again: every member's numbers equal those of an uninterrupted run."""
    from vae_study.cli import main

    points = [
        {"train.beta": 0.5, "model.latent_dim": 2},
        {"train.beta": 2.0, "model.latent_dim": 4},
    ]
    over = {
        "search.replicates": 2,
        "search.num_trials": 2,
        "search.max_concurrent": 1,
        "search.points_to_evaluate": points,
    }
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    raw = slow_trials(straight_dir, epochs=12, **over)
    assert main(["run", str(write_study(straight_dir, raw)), "--no-report"]) == 0
    straight = R.read_results(straight_dir / "runs" / "tiny" / RESULTS_FILE)

    path = write_study(tmp_path, slow_trials(tmp_path, epochs=12, **over))
    folder = tmp_path / "runs" / "tiny"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    def mid_trial():
        table = read_table(folder)
        if table is None:
            return None
        running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 3)]
        return (int(running["config_id"].iloc[0]),) if len(running) else None  # 0 is an id

    hold = Hold(tmp_path)
    hold.at(3)  # the first trial waits after its third epoch until the kill
    proc, log = start_driver(tmp_path, path, "first.log", {**env, **hold.env})
    try:
        (killed,) = wait_for(proc, log, mid_trial)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        hold.release()
    assert main(["run", str(path), "--no-report"]) == 0
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    # The killed configuration resumed from its checkpoints: its second start began past
    # epoch 1, and each member's curve has every epoch once.
    for r in (0, 1):
        history = _member_history(folder, killed, r)
        assert [h[M.EPOCH] for h in history] == list(range(1, 13))
        starts = attempts(folder, killed, r)
        assert len(starts) == 2 and starts[1]["from_epoch"] > 1, starts
    key = ["train.beta", "replicate"]
    a = straight.set_index(key).sort_index()
    b = table.set_index(key).sort_index()
    assert list(a.index) == list(b.index)
    for metric in (M.VAL_NEG_ELBO, M.VAL_NLL, M.TEST_NLL, M.TEST_RATE, M.TEST_DISTORTION):
        assert list(b[metric]) == list(a[metric]), metric  # to the bit
    assert optuna_states(folder, "tiny") == {"COMPLETE": 2}


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_asha_with_replicates_stops_whole_configurations_on_their_mean(tmp_path):
    from vae_study.cli import main

    raw = tiny_study(
        tmp_path,
        **{
            "search.replicates": 2,
            "search.num_trials": 6,
            "search.max_concurrent": 2,
            "search.algorithm": "random",
            "search.space": {"train.lr": {"log_uniform": [1e-5, 3e-3]}},
            "train.epochs": 6,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 12
    for _, config in table.groupby("config_id"):  # ASHA stops a configuration, not a seed
        assert len(config) == 2 and config["status"].nunique() == 1
        assert config["epoch"].nunique() == 1
    configs = read_configs(folder / "configs.csv")
    stopped = configs[configs["status"] == STOPPED]
    completed = configs[configs["status"] == COMPLETED]
    assert len(stopped) >= 1 and len(completed) >= 1 and len(stopped) + len(completed) == 6
    assert table.loc[table["status"] == STOPPED, "epoch"].lt(6).all()
    states = optuna_states(folder, "tiny")
    assert states == {"PRUNED": len(stopped), "COMPLETE": len(completed)}
    # ASHA saw each trial's mean: every report's scheduler metric is its members' mean.
    for trial_id in set(table["trial_id"]):
        for line in StudyLayout(folder).result_file(trial_id).read_text().splitlines():
            r = json.loads(line)
            members = [r[R.member_key(j, M.VAL_NEG_ELBO)] for j in (0, 1)]
            assert r[M.VAL_NEG_ELBO] == pytest.approx(np.mean(members), rel=1e-12)


@pytest.mark.slow
def test_ctrl_c_pauses_a_packed_study_and_the_same_command_finishes_every_member(tmp_path):
    from vae_study.records.stage import INTERRUPTED_ATTR

    over = {
        "search.replicates": 2,
        "search.num_trials": 4,
        "search.max_concurrent": 1,
        "resources.configs_per_trial": 2,
    }
    path = write_study(tmp_path, slow_trials(tmp_path, epochs=12, **over))
    folder = tmp_path / "runs" / "tiny"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    def mid_trial():
        table = read_table(folder)
        if table is None:
            return None
        running = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 3)]
        return running["trial_id"].iloc[0] if len(running) else None

    proc, log = start_driver(tmp_path, path, "first.log", env)
    try:
        paused = wait_for(proc, log, mid_trial, what="Ctrl-C")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    table = R.read_results(folder / RESULTS_FILE)
    members = table[table["trial_id"] == paused]
    assert len(members) == 4 and set(members["status"]) == {INTERRUPTED}
    assert "paused:" in (tmp_path / "first.log").read_text()
    study = optuna.load_study(study_name="tiny", storage=StudyLayout(folder).storage_url)
    for number in set(members["config_id"]):  # each configuration waits, marked
        t = study.trials[int(number)]
        assert t.state == optuna.trial.TrialState.RUNNING and t.user_attrs[INTERRUPTED_ATTR]

    from vae_study.cli import main

    assert main(["run", str(path), "--no-report"]) == 0
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 8 and set(table["status"]) == {COMPLETED}
    for cid, r in zip(members["config_id"], members["replicate"], strict=True):
        starts = attempts(folder, cid, r)  # resumed from its checkpoint, not from epoch 1
        assert len(starts) == 2 and starts[1]["from_epoch"] > 1, starts
    study = optuna.load_study(study_name="tiny", storage=StudyLayout(folder).storage_url)
    assert optuna_states(folder, "tiny") == {"COMPLETE": 4}
    for t in study.trials:
        x = table.loc[table["config_id"] == t.number, M.VAL_NLL].to_numpy()
        assert len(x) == 2 and t.value == pytest.approx(np.mean(x), rel=1e-9)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_diverged_configuration_in_a_pack_fails_while_its_pack_mate_completes(tmp_path):
    from vae_study.cli import main

    raw = tiny_study(
        tmp_path,
        **{
            "search.replicates": 2,
            "search.num_trials": 2,
            "search.max_concurrent": 1,
            "resources.configs_per_trial": 2,
            "search.space": {"train.lr": {"choice": [0.001, 1.0e8]}},
            "search.points_to_evaluate": [{"train.lr": 1.0e8}, {"train.lr": 0.001}],
            "model.activation": "elu",
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and table["trial_id"].nunique() == 1  # one pack of two
    bad, good = table[table["train.lr"] == 1.0e8], table[table["train.lr"] == 0.001]
    assert set(bad["status"]) == {FAILED} and set(good["status"]) == {COMPLETED}
    assert bad["error"].str.startswith("training diverged: the loss is").all()
    assert not table["pareto"][bad.index].any() and table["pareto"][good.index].all()
    configs = read_configs(folder / "configs.csv").set_index("config_id")
    bad_id, good_id = int(bad["config_id"].iloc[0]), int(good["config_id"].iloc[0])
    assert configs.loc[bad_id, "status"] == FAILED and configs.loc[bad_id, "n_finished"] == 0
    assert configs.loc[good_id, "n_finished"] == 2
    study = optuna.load_study(study_name="tiny", storage=StudyLayout(folder).storage_url)
    S = optuna.trial.TrialState
    assert study.trials[bad_id].state == S.FAIL
    assert study.trials[good_id].state == S.COMPLETE
    assert study.trials[good_id].value == pytest.approx(good[M.VAL_NLL].mean(), rel=1e-9)
    trial_id = table["trial_id"].iloc[0]
    lines = StudyLayout(folder).result_file(trial_id).read_text().splitlines()
    assert len({json.loads(x)["pid"] for x in lines}) == 1  # not retried


@pytest.mark.slow
def test_a_packs_worker_killed_once_resumes_every_member_from_the_checkpoint(tmp_path):
    over = {"search.replicates": 2, "search.num_trials": 1, "search.max_concurrent": 1}
    path = write_study(tmp_path, slow_trials(tmp_path, epochs=20, **over))
    folder = tmp_path / "runs" / "tiny"

    def running():
        table = read_table(folder)
        if table is None:
            return None
        rows = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 3)]
        if rows.empty:
            return None
        trial_id = rows["trial_id"].iloc[0]
        # Ray's driver writes result.json after the trial's record has its epoch: not yet there
        reports = StudyLayout(folder).result_file(trial_id)
        lines = reports.read_text().splitlines() if reports.is_file() else []
        return (trial_id, json.loads(lines[-1])["pid"]) if lines else None

    hold = Hold(tmp_path)
    hold.at(3)  # the pack waits after its third epoch until its worker is killed
    proc, log = start_driver(tmp_path, path, "run.log", hold.env)
    try:
        trial_id, pid = wait_for(proc, log, running)
        os.kill(pid, signal.SIGKILL)  # the trial's worker, once: Ray retries it
        hold.release()
        assert proc.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    lines = [
        json.loads(x) for x in StudyLayout(folder).result_file(trial_id).read_text().splitlines()
    ]
    pids = list(dict.fromkeys(r["pid"] for r in lines))
    assert pids[0] == pid and len(pids) == 2
    assert next(r for r in lines if r["pid"] == pids[1])[M.EPOCH] > 1  # from the checkpoint
    for r in (0, 1):  # each member's curve is whole: every epoch once
        assert [h[M.EPOCH] for h in _member_history(folder, 0, r)] == list(range(1, 21))
        starts = attempts(folder, 0, r)
        assert [a["pid"] for a in starts][0] == pid and len(starts) == 2
        assert starts[1]["from_epoch"] > 1
