"""Study files: the YAML space compiles to Optuna's; every bad study file has its message."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest

from vae_study.config.optuna_space import decode_params, define_by_run, encode_point, make_sampler
from vae_study.config.study import load_study, study_from_dict
from vae_study.errors import ConfigError

STUDIES = Path(__file__).resolve().parents[1] / "studies"

BASE = {
    "name": "t",
    "search": {
        "num_trials": 4,
        "max_concurrent": 2,
        "space": {
            "train.beta": {"log_uniform": [0.05, 20]},
            "train.lr": {"uniform": [1e-4, 1e-3]},
            "model.latent_dim": {"int": [2, 64], "log": True},
            "train.k": {"int": [1, 10]},
            "model.hidden": {"choice": [[400], [200, 200]]},
            "train.objective": {"choice": ["elbo", "iwae"]},
        },
    },
}


def _with(path: str, value) -> dict:
    raw = copy.deepcopy(BASE)
    node = raw
    parts = path.split("/")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return raw


_DELETE = object()


def test_space_compiles_to_optuna_distributions():
    study = study_from_dict(BASE)
    fn = define_by_run(study.search.space)
    trial = optuna.create_study().ask()
    fn(trial)
    d = trial.distributions
    assert d["train.beta"] == optuna.distributions.FloatDistribution(0.05, 20.0, log=True)
    assert d["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-3)
    assert d["model.latent_dim"] == optuna.distributions.IntDistribution(2, 64, log=True)
    assert d["train.k"] == optuna.distributions.IntDistribution(1, 10)
    assert d["model.hidden"] == optuna.distributions.CategoricalDistribution(
        ["[400]", "[200, 200]"]
    )
    assert d["train.objective"] == optuna.distributions.CategoricalDistribution(["elbo", "iwae"])


def test_fixed_trial_gives_the_run_config_of_a_trial():
    study = study_from_dict(BASE)
    params = {
        "train.beta": 0.3,
        "train.lr": 5e-4,
        "model.latent_dim": 16,
        "train.k": 5,
        "model.hidden": "[200, 200]",
        "train.objective": "iwae",
    }
    trial = optuna.trial.FixedTrial(params)
    define_by_run(study.search.space)(trial)
    assert trial.params == params
    run = study.trial_config(decode_params(study.search.space, trial.params))
    assert run.train.beta == 0.3 and run.model.hidden == (200, 200) and run.train.k == 5
    assert run.train.objective == "iwae" and run.model.latent_dim == 16


def test_samplers_follow_the_algorithm():
    assert isinstance(make_sampler(study_from_dict(BASE).search), optuna.samplers.TPESampler)
    for algo, cls in (
        ("random", optuna.samplers.RandomSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
    ):
        s = study_from_dict(_with("search/algorithm", algo))
        assert isinstance(make_sampler(s.search), cls)
    grid = study_from_dict(
        {
            "name": "g",
            "search": {
                "algorithm": "grid",
                "num_trials": 4,
                "space": {
                    "train.beta": {"choice": [0.5, 1.0]},
                    "model.hidden": {"choice": [[400], [200, 200]]},
                },
            },
        }
    )
    sampler = make_sampler(grid.search)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=sampler)
    seen = []

    def objective(t):
        define_by_run(grid.search.space)(t)
        seen.append((t.params["train.beta"], t.params["model.hidden"]))
        return 1.0

    study.optimize(objective, n_trials=10)  # the grid sampler stops the study when done
    assert len(seen) == len(set(seen)) == 4  # the whole grid, each point once
    with pytest.raises(ConfigError, match="sampler_options"):
        make_sampler(study_from_dict(_with("search/sampler_options", {"bogus": 1})).search)


def test_points_to_evaluate_are_encoded_for_optuna():
    s = study_from_dict(
        _with("search/points_to_evaluate", [{"train.beta": 1.0, "model.hidden": [400]}])
    )
    assert encode_point(s.search.points_to_evaluate[0]) == {
        "train.beta": 1.0,
        "model.hidden": "[400]",
    }


def test_objectives_default_to_the_validation_bound_under_its_honest_name():
    # Grey-level Bernoulli: a cross-entropy, so the bound is val/ce_bound, never val/nll.
    s = study_from_dict(BASE)
    assert [(o.metric, o.mode) for o in s.search.objectives] == [("val/ce_bound", "min")]
    binary = study_from_dict({**BASE, "data": {"binarize": "dynamic"}})
    assert [(o.metric, o.mode) for o in binary.search.objectives] == [("val/nll", "min")]
    m = study_from_dict(
        _with("search/objectives", [{"metric": "val/rate"}, {"metric": "val/distortion"}])
    )
    assert m.search.multi_objective
    assert [o.mode for o in m.search.objectives] == ["min", "min"]
    with pytest.raises(ConfigError, match="val/nll is not computed"):
        study_from_dict(_with("search/objectives", "val/nll"))
    with pytest.raises(ConfigError, match="bpd is not computed"):
        study_from_dict(
            {**binary.to_dict(), "search": {**BASE["search"], "objectives": ["val/bpd"]}}
        )


def test_test_metrics_drive_a_search_only_when_the_study_says_so():
    for metric in ("test/ce_bound", "test/rate", "test/active_units"):
        with pytest.raises(ConfigError, match="select_on_test: true"):
            study_from_dict(_with("search/objectives", metric))
    raw = _with("search/objectives", "test/active_units")
    raw["search"]["select_on_test"] = True
    with pytest.warns(UserWarning, match="optimistically biased"):
        au = study_from_dict(raw)
    assert au.search.objectives[0].mode == "max" and au.search.select_on_test
    # The flag survives the resolved study file (what a resume compares against).
    with pytest.warns(UserWarning):
        assert study_from_dict(au.to_dict()) == au


def test_a_searched_value_that_changes_what_the_bound_is_is_refused():
    for key, choices in (
        ("model.likelihood", ["bernoulli", "gaussian"]),
        ("data.binarize", ["none", "dynamic"]),
    ):
        with pytest.raises(ConfigError, match="changes what the study's numbers are"):
            study_from_dict(_with(f"search/space/{key}", {"choice": choices}))
    ok = study_from_dict(
        {
            **BASE,
            "data": {"binarize": "dynamic"},
            "search": {
                **BASE["search"],
                "space": {"data.binarize": {"choice": ["static", "dynamic"]}},
            },
        }
    )
    assert ok.search.space[0].values == ("static", "dynamic")


@pytest.mark.parametrize(
    "path, value, fragments",
    [
        ("search/space", {}, ["search.space: empty"]),
        ("search", _DELETE, ["search: missing"]),
        (
            "search/space/train.bta",
            {"uniform": [0, 1]},
            ["'train.bta' is not a run key", "did you mean train.beta"],
        ),
        ("search/space/train.beta", {"log_uniform": [0, 20]}, ["log scale needs low > 0"]),
        ("search/space/train.beta", {"uniform": [2, 1]}, ["low < high", "low=2, high=1"]),
        ("search/space/train.beta", {"uniform": [-1, 1]}, ["train.beta", "positive"]),
        ("search/space/train.beta", {"normal": [0, 1]}, ["exactly one of choice"]),
        ("search/space/train.beta", [0.5, 1], ["expected one of {choice"]),
        ("search/space/train.k", {"int": [0, 4]}, ["train.k: got 0"]),
        ("search/space/train.k", {"uniform": [1, 4]}, ["not a real-valued key"]),
        ("search/space/train.beta", {"int": [1, 4]}, ["not an integer key"]),
        ("search/space/model.latent_dim", {"choice": []}, ["non-empty list"]),
        ("search/space/model.latent_dim", {"choice": [2, 0]}, ["model.latent_dim: got 0"]),
        ("search/space/train.objective", {"choice": ["elbo", "vae"]}, ["train.objective"]),
        ("search/num_trials", 0, ["search.num_trials: got 0"]),
        ("search/max_concurrent", 5, ["more than search.num_trials=4"]),
        ("search/algorithm", "cmaes", ["search.algorithm", "tpe, random, grid, nsga2"]),
        ("search/algorithm", "grid", ["grid needs every search.space key to be a choice"]),
        ("search/objectives", [{"metric": "test/nll_x"}], ["unknown metric 'test/nll_x'"]),
        ("search/objectives", [{"metric": "test/nll", "mode": "up"}], ["min or max"]),
        ("search/objectives", [], ["search.objectives"]),
        ("search/points_to_evaluate", [{"train.epochs": 3}], ["not in search.space"]),
        ("search/points_to_evaluate", [{"train.beta": -1}], ["train.beta"]),
        ("search/bogus", 1, ["unknown key search.bogus"]),
        ("name", "../escape", ["name: got '../escape'", "inside output.dir"]),
        ("name", "/abs/path", ["name: got '/abs/path'"]),
        ("name", "..", ["name"]),
        ("name", _DELETE, ["name: expected the study's name"]),
        ("scheduler/type", "hyperband", ["scheduler.type"]),
        ("scheduler/grace_period", 0, ["scheduler.grace_period"]),
        ("scheduler/metric", "test/nll", ["scheduler.metric", "reported every epoch"]),
        ("resources/gpus_per_trial", 1.5, ["resources.gpus_per_trial: got 1.5"]),
        ("resources/gpus_per_trial", "some", ["resources.gpus_per_trial"]),
        ("resources/cpus_per_trial", 0, ["resources.cpus_per_trial"]),
        ("ray/dashboard", "yes", ["ray.dashboard", "true or false"]),
        ("ray/adress", "auto", ["unknown key ray.adress", "did you mean address"]),
        ("train/beta", 0, ["train.beta: got 0"]),
        ("dta", {}, ["unknown section 'dta'", "did you mean data"]),
    ],
)
def test_bad_study_files(path, value, fragments):
    with pytest.raises(ConfigError) as err:
        study_from_dict(_with(path, value))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_asha_is_refused_for_a_multi_objective_study():
    raw = _with("search/objectives", ["val/rate", "val/distortion"])
    raw["scheduler"] = {"type": "asha"}
    with pytest.raises(ConfigError, match="multi-objective"):
        study_from_dict(raw)


@pytest.mark.parametrize(
    "name", ["smoke", "beta_sweep", "iwae_k_sweep", "latent_sweep", "rd_pareto"]
)
def test_shipped_studies_are_valid_and_say_what_they_answer(name):
    path = STUDIES / f"{name}.yaml"
    study = load_study(path)
    header = path.read_text().split("\n\n")[0]
    assert "Question" in header and "Time" in header
    assert study.name == name
    if name == "rd_pareto":
        assert [o.metric for o in study.search.objectives] == ["val/rate", "val/distortion"]
    # Every shipped study selects on validation.
    assert not study.search.select_on_test
    assert all(o.metric.startswith("val/") for o in study.search.objectives)


def test_seed_run_file_is_a_valid_run_config():
    from vae_study.config.run import load_run_config
    from vae_study.config.study import STUDY_SECTIONS

    c = load_run_config(STUDIES / "seed.yaml", extra_sections=STUDY_SECTIONS)
    assert c.model.hidden == (400,) and c.model.latent_dim == 20 and c.train.epochs == 10


def test_grid_num_trials_cannot_exceed_the_grid():
    raw = {
        "name": "g",
        "search": {
            "algorithm": "grid",
            "num_trials": 5,
            "max_concurrent": 1,
            "space": {"train.beta": {"choice": [0.5, 1.0]}, "train.k": {"choice": [1, 5]}},
        },
    }
    with pytest.raises(ConfigError, match="the grid has 4 points"):
        study_from_dict(raw)
    raw["search"]["num_trials"] = 4
    assert study_from_dict(raw).search.num_trials == 4


@pytest.mark.parametrize("key", ["output.dir", "report.dir"])
def test_an_empty_output_or_report_dir_is_refused(tmp_path, key):
    # Issue 19: --set 'output.dir=""' made the study folder in the current directory.
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nsearch: {space: {train.beta: {choice: [0.5, 1.0]}}}\n")
    with pytest.raises(ConfigError, match=rf"{key}: got '', expected a path, not an empty"):
        load_study(study, [f'{key}=""'])
