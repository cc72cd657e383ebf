"""The study's files read back: results.csv cut short is refused, never read as fewer or
half trials; the report copes with any string a study holds (escaped, safe file names)."""

from __future__ import annotations

import csv
import io

import pytest

from vae_study import metrics as M
from vae_study import results as R
from vae_study.errors import CheckpointError

PARAMS = ["train.beta", "model.latent_dim"]


def _rows() -> list[dict]:
    return [
        {"trial_id": "a1", "optuna_trial": 0, "status": R.COMPLETED, "train.beta": 0.5,
         "model.latent_dim": 2, M.EPOCH: 3, M.TEST_NLL: 101.25, M.TEST_RATE: 20.5,
         M.TEST_DISTORTION: 85.0, M.TEST_KL_PER_DIM: [10.0, 10.5]},
        {"trial_id": "b2", "optuna_trial": 1, "status": R.FAILED, "train.beta": 4.0,
         "model.latent_dim": 4, M.EPOCH: 2,
         R.ERROR_KEY: "training diverged | loss nan\nat epoch 2, batch 3"},
        {"trial_id": "c3", "optuna_trial": 2, "status": R.RUNNING, "train.beta": 1.0,
         "model.latent_dim": 2, M.EPOCH: 1},
    ]


@pytest.fixture
def table(tmp_path):
    path = tmp_path / R.RESULTS_FILE
    R.write_results(path, _rows(), PARAMS, [(M.TEST_NLL, "min")])
    return path


def test_a_whole_table_reads_back_with_every_value(table):
    frame = R.read_results(table)
    assert list(frame["trial_id"]) == ["a1", "b2", "c3"]
    assert list(frame["status"]) == [R.COMPLETED, R.FAILED, R.RUNNING]
    assert frame[R.ERROR_KEY][1] == "training diverged | loss nan\nat epoch 2, batch 3"
    assert frame[M.TEST_NLL][0] == 101.25
    assert R.parse_kl_per_dim(frame[M.TEST_KL_PER_DIM][0]) == [10.0, 10.5]


def _record_ends(text: str) -> set[int]:
    """Offsets just after each whole CSV record (a quoted newline is not a record's end)."""
    ends, pos = set(), 0
    for line in io.StringIO(text, newline="").readlines():
        pos += len(line)
        try:
            list(csv.reader(io.StringIO(text[:pos], newline=""), strict=True))
        except csv.Error:
            continue
        ends.add(pos)
    return ends


def test_a_table_cut_anywhere_but_between_rows_is_refused_naming_the_file(table):
    text = table.read_text()
    ends = _record_ends(text)
    assert len(ends) == 4  # the header and three trials (one error spans two lines)
    cut_rows = 0
    for n in range(len(text)):
        table.write_text(text[:n])
        if n in ends:  # whole rows: a table of fewer trials, as when it was written
            assert len(R.read_results(table)) == len([e for e in ends if e < n])
            continue
        with pytest.raises(CheckpointError, match=rf"{table}.*damaged"):
            R.read_results(table)
        cut_rows += 1
    assert cut_rows == len(text) - 3  # every cut but the three between whole rows (0 too)


@pytest.mark.parametrize("edit, why", [
    (lambda t: "trial_id,optuna_trial,sta\n", "header"),
    (lambda t: t.replace("trial_id,optuna_trial", "trial_id,optuna_tr", 1), "header"),
    (lambda t: t[:t.rindex(",")] + "\n", "fields"),
    (lambda t: t.replace(R.COMPLETED, "complet", 1), "status"),
    (lambda t: t.replace(",", ",,", 1), "fields"),
    (lambda t: "", "empty"),
])
def test_damaged_tables_are_refused(table, edit, why):
    table.write_text(edit(table.read_text()))
    with pytest.raises(CheckpointError, match=rf"{table} is damaged"):
        R.read_results(table)


def test_a_header_cut_short_is_not_a_study_of_no_trials(tmp_path):
    path = tmp_path / R.RESULTS_FILE
    R.write_results(path, [], PARAMS)  # a study with no trial yet: the header alone
    assert len(R.read_results(path)) == 0
    header = path.read_text()
    for n in range(1, len(header)):
        path.write_text(header[:n])
        with pytest.raises(CheckpointError, match="damaged"):
            R.read_results(path)
    for n in range(1, len("trial_id,optuna_trial,status,pareto")):
        path.write_text(header[:n] + "\n")  # cut in the lead columns, even with a newline
        with pytest.raises(CheckpointError, match="header"):
            R.read_results(path)
