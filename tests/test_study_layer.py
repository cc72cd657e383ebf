"""The study layer's pure logic, without a Ray cluster: the study folder's layout, the GPU
share, the selected trial in max mode, the environment a study sets, and the search section's
parsing. The record, the tables and the searcher are in test_record.py."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from study_factory import tiny_study
from vae_study import metrics as M
from vae_study.config.schema import build_section
from vae_study.config.search import SearchConfig
from vae_study.config.study import study_from_dict
from vae_study.errors import ConfigError, StudyError
from vae_study.records import results as R
from vae_study.records.folder import StudyFolder
from vae_study.records.layout import COMPLETED, STOPPED, StudyLayout
from vae_study.records.trial import Trial


@pytest.fixture
def study(tmp_path):
    return study_from_dict(tiny_study(tmp_path))


# ---------------------------------------------------------------------------------------
# The layout.


def test_the_layout_names_every_file_of_a_study_folder(tmp_path):
    from vae_study.records.optuna_db import storage_url
    from vae_study.study.tuner import tune_trial_dirname

    layout = StudyLayout.of(tmp_path / "runs", "s")
    assert layout.folder == tmp_path / "runs" / "s"
    assert layout.study_file.name == "study.yaml" and layout.results_file.name == "results.csv"
    assert layout.optuna_db.name == "optuna.db" and layout.lock_file.name == "driver.lock"
    # The record: a fit folder per configuration and seed, its member file beside it.
    assert layout.record_dir(7, 1) == layout.folder / "trials" / "0007" / "replicate_1"
    assert layout.record_file(7, 1) == layout.folder / "trials" / "0007" / "replicate_1.json"
    assert StudyLayout(layout.confirm_dir).record_dir(7, 0).is_relative_to(layout.confirm_dir)
    # Ray's own folders, as an older vae_study's record had them (still read).
    assert layout.trial_dir("ab12") == layout.folder / "tune" / "trial_ab12"
    assert layout.member_dir("ab12", 3) == layout.trial_dir("ab12") / "member_3"
    assert layout.result_file("ab12") == layout.trial_dir("ab12") / "result.json"
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
    from vae_study.config.study import OutputConfig, ReportConfig
    from vae_study.run_files import REPORTS_DIR, RUNS_DIR

    assert OutputConfig().dir == RUNS_DIR == "runs"
    assert ReportConfig().dir == REPORTS_DIR == "reports"


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
    from vae_study.study.resources import MAX_TRIALS_PER_GPU, gpu_share

    assert MAX_TRIALS_PER_GPU == 4
    assert gpu_share("auto", gpus, concurrent) == pytest.approx(share)
    assert gpu_share(0.25, gpus, concurrent) == 0.25  # a number is kept
    assert gpu_share("auto", gpus, concurrent, "cpu") == 0.0  # CPU trials reserve no GPU


def test_resources_the_cluster_cannot_give_stop_the_study(tmp_path):
    from vae_study.study.resources import trial_resources

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
    from vae_study.study.trainable import trial_device

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
    from vae_study.report.headline import best_trial

    study = study_from_dict(
        tiny_study(tmp_path, **{"search.objectives": [{"metric": M.VAL_RATE, "mode": "max"}]})
    )
    trials = [
        Trial(i, status, {}, {M.VAL_RATE: v})
        for i, status, v in [
            ("low", COMPLETED, 2.0),
            ("high", COMPLETED, 9.0),
            ("nan", COMPLETED, math.nan),
            ("stopped", STOPPED, 50.0),
            ("mid", COMPLETED, 5.0),
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
    from vae_study.study import driver

    seen = {}

    def fake_stages(study, stages, source, verbose, pause):
        seen.update(os.environ)

    monkeypatch.setattr(driver, "_run_stages", fake_stages)
    monkeypatch.delenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", raising=False)
    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "5")
    before = dict(os.environ)
    driver._run_locked(study, tmp_path, None, False, 0)
    assert seen["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert seen["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "5"  # kept
    assert dict(os.environ) == before


def test_environment_restores_what_was_there(monkeypatch):
    from vae_study.study.cluster import environment

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
    from vae_study.config.yaml_file import write_yaml
    from vae_study.records.folder import load_folder

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
        [{"trial_id": "t1", "status": COMPLETED, "train.beta": 1.0, "model.latent_dim": 2}],
        ["train.beta", "model.latent_dim"],
    )
    sf = load_folder(folder)
    (t,) = sf.trials
    assert t.checkpoint == folder / "tune" / "trial_t1" / "checkpoint_000001"
    assert [h[M.VAL_NEG_ELBO] for h in t.history] == [99.0]


def test_study_sections_made_in_python_check_themselves():
    from vae_study.config.study import RayConfig, ResourcesConfig, SchedulerConfig

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
