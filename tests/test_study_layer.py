"""The study layer's pure logic, without a Ray cluster: the study folder's layout, the trial
status mapping, the results-table merge, the searcher's tell logic, the GPU share, the
selected trial in max mode, the environment a study sets, and the search section's parsing."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from study_factory import tiny_study
from vae_study import metrics as M
from vae_study import results as R
from vae_study.config import build_section
from vae_study.errors import ConfigError, StudyError
from vae_study.layout import StudyLayout
from vae_study.study_config import SearchConfig, study_from_dict
from vae_study.study_folder import StudyFolder, Trial


@pytest.fixture
def study(tmp_path):
    return study_from_dict(tiny_study(tmp_path))


def fake_trial(
    trial_id: str,
    status: str,
    last: dict | None = None,
    *,
    error: str = "",
    beta: float = 1.0,
    number: int = 0,
) -> SimpleNamespace:
    """What write_table reads of a Ray Trial."""
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        last_result=last,
        config={"train.beta": beta, "model.latent_dim": 2, R.OPTUNA_TRIAL_KEY: number},
        checkpoint=None,
        get_error=lambda: error,
    )


DONE = {M.EPOCH: 2, M.VAL_NEG_ELBO: 90.0, M.TEST_NEG_ELBO: 91.0, M.VAL_NLL: 88.0}


# ---------------------------------------------------------------------------------------
# The layout.


def test_the_layout_names_every_file_of_a_study_folder(tmp_path):
    from vae_study.driver import tune_trial_dirname
    from vae_study.search import storage_url

    layout = StudyLayout.of(tmp_path / "runs", "s")
    assert layout.folder == tmp_path / "runs" / "s"
    assert layout.study_file.name == "study.yaml" and layout.results_file.name == "results.csv"
    assert layout.optuna_db.name == "optuna.db" and layout.lock_file.name == "driver.lock"
    assert layout.trial_dir("ab12") == layout.folder / "tune" / "trial_ab12"
    assert layout.member_dir("ab12", 3) == layout.trial_dir("ab12") / "member_3"
    assert layout.result_file("ab12") == layout.trial_dir("ab12") / "result.json"
    # What Tune names a trial folder is what the report reads back.
    assert tune_trial_dirname(SimpleNamespace(trial_id="ab12")) == "trial_ab12"
    assert storage_url(layout.folder) == f"sqlite:///{layout.optuna_db.resolve()}"
    assert layout.checkpoints("ab12") == []
    for n in (3, 1):
        (layout.trial_dir("ab12") / f"checkpoint_00000{n}").mkdir(parents=True)
        (layout.trial_dir("ab12") / f"checkpoint_00000{n}" / "state.pt").write_bytes(b"x")
    (layout.trial_dir("ab12") / "checkpoint_000009").mkdir()  # no state: not a checkpoint
    assert [p.name for p in layout.checkpoints("ab12")] == [
        "checkpoint_000001",
        "checkpoint_000003",
    ]


def test_the_defaults_of_output_and_report_are_the_layouts():
    from vae_study.layout import REPORTS_DIR, RUNS_DIR
    from vae_study.study_config import OutputConfig, ReportConfig

    assert OutputConfig().dir == RUNS_DIR == "runs"
    assert ReportConfig().dir == REPORTS_DIR == "reports"


# ---------------------------------------------------------------------------------------
# Ray's trial status -> ours.


@pytest.mark.parametrize(
    ("ray_status", "last", "interrupted", "ours"),
    [
        ("PENDING", None, False, R.PENDING),
        ("RUNNING", {M.EPOCH: 1}, False, R.RUNNING),
        ("PAUSED", {M.EPOCH: 1}, False, R.RUNNING),
        ("TERMINATED", DONE, False, R.COMPLETED),
        ("TERMINATED", {M.EPOCH: 1, M.VAL_NEG_ELBO: 95.0}, False, R.STOPPED),  # by the scheduler
        ("TERMINATED", {R.DIVERGED_KEY: 1, R.ERROR_KEY: "nan"}, False, R.FAILED),
        ("ERROR", {M.EPOCH: 1}, False, R.FAILED),
        ("TERMINATED", DONE, True, R.INTERRUPTED),  # running when the study was paused
        ("RUNNING", {M.EPOCH: 1}, True, R.INTERRUPTED),
        ("ERROR", {M.EPOCH: 1}, True, R.FAILED),  # an error stays an error
        ("PENDING", None, True, R.PENDING),
    ],
)
def test_trial_status(ray_status, last, interrupted, ours):
    assert R.trial_status(ray_status, last or {}, interrupted=interrupted) == ours


def test_a_failed_row_says_why(study):
    err = fake_trial("e", "ERROR", {M.EPOCH: 1}, error="Traceback\n  ...\nValueError: boom\n")
    row = R.trial_row(err, study)
    assert (row["status"], row[R.ERROR_KEY]) == (R.FAILED, "ValueError: boom")
    div = fake_trial("d", "TERMINATED", {R.DIVERGED_KEY: 1, R.ERROR_KEY: "loss is nan"})
    row = R.trial_row(div, study)
    assert (row["status"], row[R.ERROR_KEY]) == (R.FAILED, "loss is nan")
    ok = R.trial_row(fake_trial("c", "TERMINATED", DONE, beta=0.5, number=7), study)
    assert ok["status"] == R.COMPLETED and R.ERROR_KEY not in ok
    assert (ok["train.beta"], ok["optuna_trial"], ok[M.VAL_NEG_ELBO]) == (0.5, 7, 90.0)


# ---------------------------------------------------------------------------------------
# The results-table merge.


def test_the_table_keeps_finished_trials_ray_forgot_and_drops_unfinished_ones(study, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    R.write_table(
        study,
        folder,
        [
            fake_trial("old_done", "TERMINATED", DONE),
            fake_trial("old_running", "RUNNING", {M.EPOCH: 1}),
            fake_trial("kept", "RUNNING", {M.EPOCH: 1}),
        ],
    )
    # A restored driver: Ray knows "kept" (finished now) and a new trial only.
    rows = R.write_table(
        study,
        folder,
        [fake_trial("kept", "TERMINATED", DONE), fake_trial("new", "PENDING")],
        {"new"},
    )
    got = {r["trial_id"]: r["status"] for r in rows}
    assert got == {"kept": R.COMPLETED, "new": R.PENDING, "old_done": R.COMPLETED}
    table = R.read_results(folder / R.RESULTS_FILE)
    assert dict(zip(table["trial_id"], table["status"], strict=True)) == got


def test_a_damaged_table_is_rebuilt_from_rays_trials(study, tmp_path):
    (tmp_path / R.RESULTS_FILE).write_text("garbage without a newline")
    rows = R.write_table(study, tmp_path, [fake_trial("a", "TERMINATED", DONE)])
    assert [r["trial_id"] for r in rows] == ["a"]
    assert list(R.read_results(tmp_path / R.RESULTS_FILE)["trial_id"]) == ["a"]


# ---------------------------------------------------------------------------------------
# The searcher's tell logic.


def test_optuna_outcome():
    from vae_study.searcher import optuna_outcome

    S = optuna.trial.TrialState
    one, two = [M.VAL_NLL], [M.VAL_RATE, M.VAL_DISTORTION]
    assert optuna_outcome(one, {M.VAL_NLL: 80.0}) == (S.COMPLETE, 80.0)
    assert optuna_outcome(one, {M.VAL_NLL: 3}) == (S.COMPLETE, 3)
    assert optuna_outcome(two, {M.VAL_RATE: 1.0, M.VAL_DISTORTION: 2.0}) == (S.COMPLETE, [1.0, 2.0])
    assert optuna_outcome(two, {M.VAL_RATE: 1.0}) == (S.PRUNED, None)  # stopped early
    assert optuna_outcome(one, None) == (S.PRUNED, None)
    assert optuna_outcome(one, {}) == (S.PRUNED, None)
    assert optuna_outcome(one, {M.VAL_NLL: math.nan}) == (S.FAIL, None)
    assert optuna_outcome(one, {M.VAL_NLL: math.inf}) == (S.FAIL, None)
    assert optuna_outcome(one, {M.VAL_NLL: 80.0}, error=True) == (S.FAIL, None)
    assert optuna_outcome(one, {M.VAL_NLL: 80.0, R.DIVERGED_KEY: 1}) == (S.FAIL, None)


def test_the_searcher_tells_optuna_each_trial_once():
    """StudySearch.on_trial_complete on a searcher whose private state is set by hand, as
    OptunaSearch sets it (the attributes the adapter in searcher.py reads)."""
    from vae_study.searcher import StudySearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ot_study = optuna.create_study()
    search = object.__new__(StudySearch)
    search._metric = M.VAL_NLL
    search._ot_study = ot_study
    search._ot_trials = {"a": ot_study.ask(), "b": ot_study.ask(), "c": ot_study.ask()}
    search._completed_trials = set()
    search.on_trial_complete("a", {M.VAL_NLL: 70.0})
    search.on_trial_complete("a", {M.VAL_NLL: 99.0})  # told already: ignored
    search.on_trial_complete("b", {R.DIVERGED_KEY: 1, M.EPOCH: 2})
    search.on_trial_complete("c", {M.EPOCH: 1})  # stopped before its objective existed
    search.on_trial_complete("unknown", {M.VAL_NLL: 1.0})  # not asked by this searcher
    states = [(t.state, t.value) for t in ot_study.trials]
    S = optuna.trial.TrialState
    assert states == [(S.COMPLETE, 70.0), (S.FAIL, None), (S.PRUNED, None)]
    assert search._completed_trials == {"a", "b", "c"}


def test_an_untested_ray_or_optuna_release_is_warned_about_once(monkeypatch):
    from vae_study import searcher

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        searcher.check_versions.cache_clear()
        searcher.check_versions()  # the installed releases are the tested ones
    monkeypatch.setattr(searcher, "TESTED_RAY", frozenset({"1.0"}))
    searcher.check_versions.cache_clear()
    with pytest.warns(UserWarning, match=r"ray .* was not tested .*tested: 1\.0"):
        searcher.check_versions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        searcher.check_versions()  # once per process
    searcher.check_versions.cache_clear()


def test_a_missing_private_attribute_is_a_study_error_naming_the_versions():
    from vae_study.searcher import optuna_trials

    with pytest.raises(StudyError, match="_ot_trials is missing in ray .* tested with ray"):
        optuna_trials(SimpleNamespace())


# ---------------------------------------------------------------------------------------
# Resources.


@pytest.mark.parametrize(
    ("gpus", "concurrent", "share"),
    [
        (0, 4, 0.0),
        (1, 1, 1.0),
        (1, 2, 0.5),
        (1, 3, 1 / 3),
        (1, 4, 0.25),
        (2, 3, 0.5),
        (2, 4, 0.5),
        (4, 2, 1.0),
        (8, 3, 1.0),
        (3, 4, 0.5),
        (1, 8, 0.25),
        (1, 64, 0.25),
        (2, 16, 0.25),  # at most MAX_TRIALS_PER_GPU on a GPU
    ],
)
def test_the_auto_gpu_share(gpus, concurrent, share):
    from vae_study.cluster import MAX_TRIALS_PER_GPU, gpu_share

    assert MAX_TRIALS_PER_GPU == 4
    assert gpu_share("auto", gpus, concurrent) == pytest.approx(share)
    assert gpu_share(0.25, gpus, concurrent) == 0.25  # a number is kept
    assert gpu_share("auto", gpus, concurrent, "cpu") == 0.0  # CPU trials reserve no GPU


def test_resources_the_cluster_cannot_give_stop_the_study(tmp_path):
    from vae_study.cluster import trial_resources

    study = study_from_dict(
        tiny_study(tmp_path, **{"search.max_concurrent": 4, "train.device": "auto"})
    )
    assert trial_resources(study, cpus=8, gpus_total=1) == {"cpu": 1.0, "gpu": 0.25}
    assert trial_resources(study, cpus=8, gpus_total=0) == {"cpu": 1.0, "gpu": 0.0}
    half = study_from_dict(
        tiny_study(tmp_path, **{"resources.gpus_per_trial": 0.5, "train.device": "auto"})
    )
    with pytest.raises(StudyError, match="has no GPU"):
        trial_resources(half, cpus=8, gpus_total=0)
    one = study_from_dict(
        tiny_study(tmp_path, **{"resources.gpus_per_trial": 1, "train.device": "cuda"})
    )
    with pytest.raises(StudyError, match="whole cluster has 0.5 GPUs"):
        trial_resources(one, cpus=8, gpus_total=0.5)
    cuda = study_from_dict(tiny_study(tmp_path, **{"train.device": "cuda"}))  # share auto
    with pytest.raises(StudyError, match="no trial gets a share"):
        trial_resources(cuda, cpus=8, gpus_total=0)
    many = study_from_dict(tiny_study(tmp_path, **{"resources.cpus_per_trial": 16}))
    with pytest.raises(StudyError, match="cpus_per_trial=16, but the whole cluster has 8"):
        trial_resources(many, cpus=8, gpus_total=0)


@pytest.mark.parametrize(
    ("device", "gpu_ids", "cuda", "expected"),
    [
        ("auto", [], True, "cpu"),  # no share: the CPU, even where a GPU is visible
        ("cpu", [], True, "cpu"),
        ("auto", ["3"], True, "cuda"),  # the GPU Ray gave, which the trial sees as cuda:0
        ("cuda", ["3"], True, "cuda"),
        ("cuda:3", ["3"], True, "cuda:3"),  # resolve_device maps it to the visible cuda:0
        ("auto", ["0"], False, "cpu"),  # a node that advertises a GPU torch cannot see
    ],
)
def test_a_trials_device_follows_the_share_ray_gave_it(device, gpu_ids, cuda, expected):
    from vae_study.trainable import trial_device

    assert trial_device(device, gpu_ids, cuda) == expected


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"resources.gpus_per_trial": 2}, "expected a fraction in [0, 1] or auto"),
        (
            {"resources.gpus_per_trial": 0, "train.device": "cuda"},
            "a trial without a GPU share runs on the CPU",
        ),
        ({"resources.gpus_per_trial": 0.5, "train.device": "cpu"}, "GPU shares they never use"),
    ],
)
def test_device_and_gpu_share_must_agree(tmp_path, keys, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        study_from_dict(tiny_study(tmp_path, **keys))


# ---------------------------------------------------------------------------------------
# The report's selected trial.


def test_best_trial_in_max_mode(tmp_path):
    from vae_study.report import best_trial

    study = study_from_dict(
        tiny_study(tmp_path, **{"search.objectives": [{"metric": M.VAL_RATE, "mode": "max"}]})
    )
    trials = [
        Trial(i, status, {}, {M.VAL_RATE: v})
        for i, status, v in [
            ("low", R.COMPLETED, 2.0),
            ("high", R.COMPLETED, 9.0),
            ("nan", R.COMPLETED, math.nan),
            ("stopped", R.STOPPED, 50.0),
            ("mid", R.COMPLETED, 5.0),
        ]
    ]
    assert best_trial(StudyFolder(tmp_path, study, trials)).trial_id == "high"
    low = study_from_dict(
        tiny_study(tmp_path, **{"search.objectives": [{"metric": M.VAL_RATE, "mode": "min"}]})
    )
    assert best_trial(StudyFolder(tmp_path, low, trials)).trial_id == "low"
    assert best_trial(StudyFolder(tmp_path, study, trials[2:4])) is None


# ---------------------------------------------------------------------------------------
# The driver leaves the process's environment as it found it.


def test_a_study_sets_tunes_environment_only_while_it_runs(study, tmp_path, monkeypatch):
    from vae_study import driver

    seen = {}

    def fake_tuner(study, folder, source, verbose, pause):
        seen.update(os.environ)

    monkeypatch.setattr(driver, "_run_tuner", fake_tuner)
    monkeypatch.delenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", raising=False)
    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "5")
    before = dict(os.environ)
    driver._run_locked(study, tmp_path, None, False, 0)
    assert seen["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert seen["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "5"  # kept
    assert dict(os.environ) == before


def test_environment_restores_what_was_there(monkeypatch):
    from vae_study.cluster import environment

    monkeypatch.setenv("VAE_STUDY_A", "a")
    monkeypatch.delenv("VAE_STUDY_B", raising=False)
    with pytest.raises(KeyError), environment({"VAE_STUDY_A": "1", "VAE_STUDY_B": "2"}):
        assert (os.environ["VAE_STUDY_A"], os.environ["VAE_STUDY_B"]) == ("1", "2")
        raise KeyError("the block fails: the environment is restored all the same")
    assert os.environ["VAE_STUDY_A"] == "a" and "VAE_STUDY_B" not in os.environ


# ---------------------------------------------------------------------------------------
# The search section: the same machinery as every other section.


def test_the_search_section_takes_its_defaults_from_the_dataclass(tmp_path):
    raw = tiny_study(tmp_path)
    raw["search"] = {"space": raw["search"]["space"], "num_trials": 2, "max_concurrent": 1}
    s = study_from_dict(raw).search
    d = SearchConfig()
    assert (s.algorithm, s.seed, s.points_to_evaluate, s.sampler_options, s.select_on_test) == (
        d.algorithm,
        d.seed,
        d.points_to_evaluate,
        d.sampler_options,
        d.select_on_test,
    )


def test_a_search_section_built_in_python_is_checked_like_one_read_from_yaml():
    with pytest.raises(ConfigError, match="search.max_concurrent: got 3, more than"):
        build_section(SearchConfig, {"num_trials": 2, "max_concurrent": 3}, "search")
    with pytest.raises(ConfigError, match=r"unknown key search.seeed;.*did you mean seed"):
        build_section(SearchConfig, {"seeed": 1}, "search")
    with pytest.raises(ConfigError, match="search.seed: got -1"):
        build_section(SearchConfig, {"seed": -1}, "search")
    with pytest.raises(ConfigError, match="search.sampler_options: got 3, expected a mapping"):
        build_section(SearchConfig, {"sampler_options": 3}, "search")
    s = build_section(SearchConfig, {"num_trials": 4.0}, "search")  # 4.0: an integer
    assert s.num_trials == 4 and isinstance(s.num_trials, int)


def test_null_points_and_options_mean_none(tmp_path):
    raw = tiny_study(tmp_path)
    raw["search"].update(points_to_evaluate=None, sampler_options=None)
    s = study_from_dict(raw).search
    assert s.points_to_evaluate == () and s.sampler_options == {}


def test_an_old_study_folder_opens_through_the_layout(tmp_path):
    """A folder written before the layout object (hand-made with literal names, as the
    driver wrote them) reads back through it."""
    from conftest import write_mnist
    from vae_study.checkpoint import write_yaml
    from vae_study.study_folder import load_folder

    root = tmp_path / "data"
    write_mnist(root, n_train=200, n_test=100)
    raw = tiny_study(tmp_path)
    folder = Path(tmp_path / "runs" / "old")
    (folder / "tune" / "trial_t1" / "checkpoint_000001").mkdir(parents=True)
    (folder / "tune" / "trial_t1" / "checkpoint_000001" / "state.pt").write_bytes(b"x")
    (folder / "tune" / "trial_t1" / "result.json").write_text(
        '{"epoch": 1, "val/neg_elbo": 99.0}\n'
    )
    write_yaml(folder / "study.yaml", study_from_dict(raw).to_dict())
    R.write_results(
        folder / "results.csv",
        [{"trial_id": "t1", "status": R.COMPLETED, "train.beta": 1.0, "model.latent_dim": 2}],
        ["train.beta", "model.latent_dim"],
    )
    sf = load_folder(folder)
    (t,) = sf.trials
    assert t.checkpoint == folder / "tune" / "trial_t1" / "checkpoint_000001"
    assert [h[M.VAL_NEG_ELBO] for h in t.history] == [99.0]


def test_the_names_old_study_folders_pickled_still_resolve():
    """Ray pickled the Tuner (its callback, searcher, trial-folder namer) into tune/ of a study
    started before the split, under vae_study.tune and vae_study.study_config; a resume
    unpickles them by those names."""
    import pickle

    from vae_study import driver, search_config, searcher, study_config, trainable, tune

    assert (tune.ResultsTable, tune.StudySearch, tune.train_trial) == (
        driver.ResultsTable,
        searcher.StudySearch,
        trainable.train_trial,
    )
    assert tune.trial_dirname(SimpleNamespace(trial_id="ab")) == "trial_ab"
    assert (study_config.Param, study_config.SearchConfig, study_config.Objective) == (
        search_config.Param,
        search_config.SearchConfig,
        search_config.Objective,
    )
    # A pickle that names the class by its old module loads (what Tuner.restore does).
    old = pickle.dumps(search_config.Objective("val/nll", "min"), protocol=0).replace(
        b"vae_study.search_config", b"vae_study.study_config"
    )
    assert b"vae_study.study_config" in old
    assert pickle.loads(old) == search_config.Objective("val/nll", "min")


def test_study_sections_made_in_python_check_themselves():
    from vae_study.study_config import RayConfig, ResourcesConfig, SchedulerConfig

    for make, fragment in (
        (lambda: SchedulerConfig(grace_period=0), "scheduler.grace_period: got 0"),
        (lambda: ResourcesConfig(gpus_per_trial=3), "resources.gpus_per_trial: got 3.0"),
        (lambda: RayConfig(dashboard_port=70000), "ray.dashboard_port: got 70000"),
        (lambda: SearchConfig(num_trials=2, max_concurrent=5), "more than search.num_trials"),
        (lambda: SearchConfig(num_trials="x"), "search.num_trials: got 'x'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            make()
    assert ResourcesConfig(cpus_per_trial=2).cpus_per_trial == 2.0  # coerced as from YAML
