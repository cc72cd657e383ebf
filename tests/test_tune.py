"""Studies under a real Ray: end to end and rerun, multi-objective, a two-node cluster, and
the checks made before anything is scheduled. Faults are in test_faults.py."""

from __future__ import annotations

import math
import time
from pathlib import Path

import optuna
import pytest
import yaml

from study_factory import optuna_states as _optuna_states
from study_factory import tiny_study as _study
from study_factory import write_study as _write
from vae_study.cli import main
from vae_study.config.study import study_from_dict
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, RESULTS_FILE, STOPPED
from vae_study.records.pareto import pareto_front

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("shared_ray")
def test_study_runs_end_to_end(tmp_path, capsys):
    ray_results = Path.home() / "ray_results"
    existed = ray_results.exists()
    path = _write(
        tmp_path,
        _study(tmp_path, **{"report.enabled": True, "report.dir": str(tmp_path / "reports")}),
    )
    assert main(["run", str(path)]) == 0
    folder = tmp_path / "runs" / "tiny"
    report = tmp_path / "reports" / "tiny"
    assert {"index.html", "rate_distortion.png", "search.png"} <= {p.name for p in report.iterdir()}
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and table["trial_id"].is_unique
    assert set(table["status"]) == {COMPLETED}
    assert table["test/nll"].map(math.isfinite).all() and (table["epoch"] == 2).all()
    assert table["train.beta"].between(0.1, 10.0).all()
    assert set(table["model.latent_dim"]) <= {2, 4}
    # The neg-ELBO splits into rate and distortion in every row.
    assert (
        (table["test/rate"] + table["test/distortion"] - table["test/neg_elbo"]).abs() < 1e-6
    ).all()
    assert _optuna_states(folder, "tiny") == {"COMPLETE": 4}
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    for _, row in table.iterrows():
        t = by_number[int(row["optuna_trial"])]
        assert t.params["train.beta"] == pytest.approx(row["train.beta"])
        assert t.value == pytest.approx(row["val/nll"])  # selected on validation
    assert (folder / "study.yaml").is_file() and (folder / "tune").is_dir()
    assert ray_results.exists() == existed  # nothing written to ~/ray_results

    # The same command again: everything is finished, nothing is re-run.
    before = table.set_index("trial_id")["test/nll"].to_dict()
    assert main(["run", str(path), "--no-report"]) == 0
    again = R.read_results(folder / RESULTS_FILE)
    assert again.set_index("trial_id")["test/nll"].to_dict() == pytest.approx(before)
    assert _optuna_states(folder, "tiny") == {"COMPLETE": 4}

    # Another search space into the same folder is refused; --fresh starts over.
    capsys.readouterr()
    changed = _write(
        tmp_path, _study(tmp_path, **{"search.space": {"train.beta": {"log_uniform": [0.5, 2.0]}}})
    )
    assert main(["run", str(changed)]) == 2
    assert "another search section" in capsys.readouterr().err


@pytest.mark.usefixtures("shared_ray")
def test_a_relative_output_dir_is_the_driver_s_not_the_trial_s(tmp_path, monkeypatch):
    # output.dir "runs" (the default) from the folder the command is typed in: Ray runs each
    # trial in a working directory of its own, and the fit folders must still land in the
    # study's trials/ (once they went to Ray's session folder, and every trial read "stopped").
    raw = _study(tmp_path, **{"search.num_trials": 2, "output.dir": "runs"})
    path = _write(tmp_path, raw)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-report"]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 2 and set(table["status"]) == {COMPLETED}
    assert table["test/nll"].map(math.isfinite).all()
    finals = sorted(folder.glob("trials/*/replicate_0/final.json"))
    assert len(finals) == 2


@pytest.mark.usefixtures("shared_ray")
def test_multi_objective_study_returns_its_pareto_set(tmp_path):
    raw = _study(
        tmp_path,
        **{
            "name": "rd",
            "search.algorithm": "nsga2",
            "search.num_trials": 5,
            "search.objectives": [{"metric": "val/rate"}, {"metric": "val/distortion"}],
        },
    )
    assert main(["run", str(_write(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "rd"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 5
    points = table[["val/rate", "val/distortion"]].values.tolist()
    ours = {int(table["optuna_trial"][i]) for i in pareto_front(points, ["min", "min"])}
    study = optuna.load_study(study_name="rd", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert {t.number for t in study.best_trials} == ours and ours
    assert set(table.loc[table["pareto"], "optuna_trial"].astype(int)) == ours


@pytest.mark.usefixtures("own_ray")
def test_trials_run_on_both_nodes_of_a_two_node_cluster(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        raw = _study(tmp_path, **{"ray.address": cluster.address, "train.epochs": 3})
        assert main(["run", str(_write(tmp_path, raw))]) == 0
        table = R.read_results(tmp_path / "runs" / "tiny" / RESULTS_FILE)
        assert len(table) == 4 and set(table["status"]) == {COMPLETED}
        # The study's driver has left the cluster; ask it again which nodes it has.
        ray.init(address=cluster.address, include_dashboard=False)
        node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(node_ids) == 2
        assert set(table["node"]) == node_ids, table["node"].tolist()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.usefixtures("own_ray")
def test_gpus_on_a_cluster_without_gpus_stop_at_once(tmp_path, capsys):
    import ray

    raw = _study(tmp_path, **{"resources.gpus_per_trial": 0.5, "train.device": "auto"})
    t0 = time.monotonic()
    # A cluster told it has no GPU, also on a machine that has one.
    ray.init(
        address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR"
    )
    try:
        assert main(["run", str(_write(tmp_path, raw))]) == 2
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert "gpus_per_trial=0.5" in err and "no GPU" in err
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "runs" / "tiny" / RESULTS_FILE).exists()


def test_resolved_study_file_round_trips(tmp_path):
    study = study_from_dict(_study(tmp_path))
    text = yaml.safe_dump(study.to_dict(), sort_keys=False)
    assert study_from_dict(yaml.safe_load(text)) == study


@pytest.mark.usefixtures("shared_ray")
def test_asha_stops_weak_trials_and_they_are_recorded_as_stopped(tmp_path):
    raw = _study(
        tmp_path,
        **{
            "search.num_trials": 6,
            "search.max_concurrent": 2,
            "search.algorithm": "random",
            "search.space": {"train.lr": {"log_uniform": [1e-5, 3e-3]}},
            "train.epochs": 6,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        },
    )
    assert main(["run", str(_write(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 6 and set(table["status"]) <= {COMPLETED, STOPPED}
    stopped = table[table["status"] == STOPPED]
    completed = table[table["status"] == COMPLETED]
    assert len(stopped) >= 1 and len(completed) >= 1
    assert (stopped["epoch"] < 6).all() and (completed["epoch"] == 6).all()
    assert completed["test/nll"].notna().all() and stopped["test/nll"].isna().all()
    states = _optuna_states(folder, "tiny")
    assert states.get("PRUNED") == len(stopped) and states.get("COMPLETE") == len(completed)
