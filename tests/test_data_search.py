"""Searched data keys: train_subset and static/dynamic binarization reach each trial's
training data; keys that would change the evaluation data, an estimator or the examples it
averages over (every eval key but eval.chunk_size) are refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from study_factory import tiny_study, write_study
from vae_study import metrics as M
from vae_study.cli import main
from vae_study.config.run import EvalConfig
from vae_study.config.study import study_from_dict
from vae_study.errors import ConfigError
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, RESULTS_FILE


@pytest.mark.parametrize(
    "key, spec, why",
    [
        ("data.dataset", {"choice": ["mnist", "fashion_mnist"]}, "one study per dataset"),
        ("data.val_size", {"int": [100, 200]}, "validation examples every trial is scored on"),
        ("data.root", {"choice": ["/a", "/b"]}, "where the files are"),
    ],
)
def test_keys_that_change_the_evaluation_data_cannot_be_searched(tmp_path, key, spec, why):
    with pytest.raises(ConfigError) as err:
        study_from_dict(tiny_study(tmp_path, **{"search.space": {key: spec}}))
    message = str(err.value)
    assert f"search.space.{key}" in message and "cannot be searched" in message
    assert why in message and repr(spec)[:20] in message


def test_a_study_searching_eval_val_k_stops_in_one_line_before_its_folder(tmp_path, capsys):
    raw = tiny_study(tmp_path, **{"search.space": {"eval.val_k": {"choice": [10, 1000]}}})
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "search.space.eval.val_k" in err and "eval.val_k cannot be searched" in err
    assert "so a study would select on the estimator, not the model" in err
    assert "set it once for the whole study" in err
    assert not (tmp_path / "runs").exists()


# Every field of the eval section, so a key added to EvalConfig is refused here unless it
# joins eval.chunk_size among the keys that change memory use only.
EVAL_KEYS = [f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)]


@pytest.mark.parametrize("key", [k for k in EVAL_KEYS if k != "eval.chunk_size"])
def test_eval_keys_that_change_an_estimator_or_its_examples_cannot_be_searched(tmp_path, key):
    spec = {"choice": [10, 20]}
    with pytest.raises(ConfigError) as err:
        study_from_dict(tiny_study(tmp_path, **{"search.space": {key: spec}}))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"search.space.{key}: got {spec!r}, but {key} cannot be searched: ")
    assert message.endswith("set it once for the whole study")


def test_eval_chunk_size_can_be_searched(tmp_path):
    named = {"k", "val_k", "val_examples", "nll_examples", "surgery_examples", "chunk_size"}
    assert {f"eval.{name}" for name in named} <= set(EVAL_KEYS)  # the parametrisation above
    raw = tiny_study(tmp_path, **{"search.space": {"eval.chunk_size": {"choice": [512, 4096]}}})
    study = study_from_dict(raw)
    assert [(p.key, p.values) for p in study.search.space] == [("eval.chunk_size", (512, 4096))]


def test_binarize_none_against_binary_data_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match="changes what the study's numbers are"):
        study_from_dict(
            tiny_study(
                tmp_path, **{"search.space": {"data.binarize": {"choice": ["none", "static"]}}}
            )
        )


def test_a_searched_subset_larger_than_the_data_stops_the_study_before_its_folder(tmp_path, capsys):
    raw = tiny_study(
        tmp_path,
        **{  # 600 training images, 100 held out: 500 to train on
            "search.space": {"data.train_subset": {"choice": [100, 501]}}
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "data.train_subset: got 501" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def _reports(folder: Path, trial_id: str) -> list[dict]:
    path = folder / "tune" / f"trial_{trial_id}" / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_each_trial_trains_on_the_data_its_label_says(tmp_path):
    raw = tiny_study(
        tmp_path,
        **{
            "data.binarize": "static",
            "train.epochs": 1,
            "search.algorithm": "grid",
            "search.num_trials": 4,
            "search.space": {
                "data.train_subset": {"choice": [100, 300]},
                "data.binarize": {"choice": ["static", "dynamic"]},
            },
        },
    )
    assert main(["run", str(write_study(tmp_path, raw)), "--no-report"]) == 0
    folder = tmp_path / "runs" / "tiny"
    table = R.read_results(folder / RESULTS_FILE)
    assert len(table) == 4 and set(table["status"]) == {COMPLETED}
    labels = set(zip(table["data.train_subset"], table["data.binarize"], strict=True))
    assert labels == {(100, "static"), (100, "dynamic"), (300, "static"), (300, "dynamic")}
    assert (table[M.TRAIN_EXAMPLES] == table["data.train_subset"]).all()
    for row in table.to_dict("records"):
        reports = _reports(folder, row["trial_id"])
        noise = {"static": "none", "dynamic": "bernoulli"}[row["data.binarize"]]
        assert {r[M.TRAIN_NOISE] for r in reports} == {noise}
        assert {r[M.TRAIN_EXAMPLES] for r in reports} == {row["data.train_subset"]}
