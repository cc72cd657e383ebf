"""The study's files read back: results.csv cut short is refused, never read as fewer or
half trials; the report copes with any string a study holds (escaped, safe file names)."""

from __future__ import annotations

import csv
import io
import re

import pytest

from conftest import write_mnist
from study_factory import make_study_folder
from vae_study import metrics as M
from vae_study.errors import CheckpointError
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, FAILED, INTERRUPTED, RESULTS_FILE, RUNNING
from vae_study.report.model_figures import model_figure_name
from vae_study.report.page import build_report

PARAMS = ["train.beta", "model.latent_dim"]


def _rows() -> list[dict]:
    return [
        {
            "trial_id": "a1",
            "optuna_trial": 0,
            "status": COMPLETED,
            "train.beta": 0.5,
            "model.latent_dim": 2,
            M.EPOCH: 3,
            M.TEST_NLL: 101.25,
            M.TEST_RATE: 20.5,
            M.TEST_DISTORTION: 85.0,
            M.TEST_KL_PER_DIM: [10.0, 10.5],
        },
        {
            "trial_id": "b2",
            "optuna_trial": 1,
            "status": FAILED,
            "train.beta": 4.0,
            "model.latent_dim": 4,
            M.EPOCH: 2,
            R.ERROR_KEY: "training diverged | loss nan\nat epoch 2, batch 3",
        },
        {
            "trial_id": "c3",
            "optuna_trial": 2,
            "status": RUNNING,
            "train.beta": 1.0,
            "model.latent_dim": 2,
            M.EPOCH: 1,
        },
    ]


@pytest.fixture
def table(tmp_path):
    path = tmp_path / RESULTS_FILE
    R.write_results(path, _rows(), PARAMS, [(M.TEST_NLL, "min")])
    return path


def test_a_whole_table_reads_back_with_every_value(table):
    frame = R.read_results(table)
    assert list(frame["trial_id"]) == ["a1", "b2", "c3"]
    assert list(frame["status"]) == [COMPLETED, FAILED, RUNNING]
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


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda t: "trial_id,optuna_trial,sta\n", "header"),
        (lambda t: t.replace("trial_id,optuna_trial", "trial_id,optuna_tr", 1), "header"),
        (lambda t: t[: t.rindex(",")] + "\n", "fields"),
        (lambda t: t.replace(COMPLETED, "complet", 1), "status"),
        (lambda t: t.replace(",", ",,", 1), "fields"),
        (lambda t: "", "empty"),
    ],
)
def test_damaged_tables_are_refused(table, edit, why):
    table.write_text(edit(table.read_text()))
    with pytest.raises(CheckpointError, match=rf"{table} is damaged"):
        R.read_results(table)


def test_a_header_cut_short_is_not_a_study_of_no_trials(tmp_path):
    path = tmp_path / RESULTS_FILE
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


# --- the report: any string a study holds ---------------------------------------------------


def _cells(line: str) -> int:
    """Columns of a markdown table line (an escaped ``\\|`` is not a separator)."""
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


@pytest.mark.usefixtures("quick_figures")
def test_the_report_escapes_study_strings_and_names_files_safely(tmp_path):
    data = write_mnist(tmp_path / "data")
    folder = make_study_folder(
        tmp_path,
        data,
        n_trials=4,
        checkpoints=2,
        statuses=[COMPLETED, COMPLETED, FAILED, COMPLETED],
    )
    table = R.read_results(folder / RESULTS_FILE)
    error = "diverged | loss `nan`\n<b>at</b> epoch 2 [see](x)"
    ids = {"00000000": "sweep/a|1", "00000001": "../b", "00000002": "c/d", "00000003": "e`*"}
    table = table.astype({"checkpoint": object, R.ERROR_KEY: object})  # empty: read as NaN
    for old in ids:
        # The trained trials keep their checkpoints through the checkpoint column.
        found = sorted((folder / "tune" / f"trial_{old}").glob("checkpoint_*"))
        if found:
            table.loc[table.trial_id == old, "checkpoint"] = str(found[0])
    table.loc[table.status == FAILED, R.ERROR_KEY] = error
    table["trial_id"] = table["trial_id"].map(ids)
    table.to_csv(folder / RESULTS_FILE, index=False)

    out = build_report(folder, tmp_path / "report")
    summary = (out / "summary.md").read_text()
    # Every markdown table keeps its column count, row by row.
    tables = [block.splitlines() for block in summary.split("\n\n") if block.startswith("| ")]
    assert len(tables) >= 2  # the best trial, the Pareto front
    for lines in tables:
        assert (
            {_cells(line) for line in lines} == {_cells(lines[0])} == {len(lines[1].split("|")) - 2}
        )
    assert "sweep/a\\|1" in summary and "<b>" not in summary
    failed = summary.split("## Failed trials")[1].split("\n\n")[1]
    assert failed == (
        "- c/d (failed): diverged \\| loss \\`nan\\`<br>&lt;b&gt;at&lt;/b&gt; epoch 2 \\[see\\](x)"
    )
    # Model pictures of the two trained trials: plain file names inside the report folder.
    pictures = sorted(p.name for p in out.glob("model_*.png"))
    assert pictures == sorted(model_figure_name(i) for i in ("sweep/a|1", "../b"))
    assert all("/" not in p and "|" not in p for p in pictures)
    assert [p for p in out.rglob("*") if p.is_dir()] == []
    page = (out / "index.html").read_text()
    assert all(f'src="{p}"' in page for p in pictures)


def test_model_figure_names_are_plain_and_distinct():
    ids = ["abc_00001", "a/b", "a_b", "..", "../../etc/passwd", "a\\b", "x" * 300]
    names = [model_figure_name(i) for i in ids]
    assert names[0] == "model_abc_00001.png" and names[2] == "model_a_b.png"
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"model_[A-Za-z0-9_.-]+\.png", n) and len(n) < 120 for n in names)


def test_every_status_word_the_driver_writes_reads_back(tmp_path):
    """A paused study's table holds `interrupted` rows: reading it back must not call the
    table damaged (the driver would then rebuild it and lose the word)."""
    from vae_study.records.layout import STATUSES

    assert INTERRUPTED in STATUSES
    rows = [{"trial_id": f"t{i}", "optuna_trial": i, "status": s} for i, s in enumerate(STATUSES)]
    path = tmp_path / "results.csv"
    R.write_results(path, rows, [])
    assert list(R.read_results(path)["status"]) == list(STATUSES)


class _FailedTrial:
    """What the results table needs of a failed Ray trial: the driver's error file, and
    the storage copy that Tune writes only at its next sync (absent here)."""

    def __init__(self, error_file):
        self.error_file = error_file

    def get_error(self):
        return None


def test_a_trial_error_is_read_from_the_driver_copy_before_tune_syncs_it(tmp_path):
    err = tmp_path / "error.txt"
    err.write_text(
        "Failure # 1 (occurred at 2026-12-06_18-00-00)\n"
        "Traceback (most recent call last):\n  ...\n"
        "vae_study.errors.CheckpointError: /x/state.pt cannot be read: truncated\n"
    )
    assert R.first_error_line(_FailedTrial(str(err))) == (
        "vae_study.errors.CheckpointError: /x/state.pt cannot be read: truncated"
    )
    missing = R.first_error_line(_FailedTrial(str(tmp_path / "none.txt")))
    assert "error.txt" in missing
