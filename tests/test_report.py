"""The report: the Pareto front on hand-made points, and a whole report from a study folder."""

from __future__ import annotations

import math
import re
import time

import pytest
from PIL import Image

from conftest import write_mnist
from study_factory import make_study_folder
from vae_study.cli import main
from vae_study.records.layout import COMPLETED, FAILED, PENDING, RUNNING, STOPPED
from vae_study.records.pareto import dominates, pareto_front
from vae_study.report.page import build_report


def test_pareto_front_on_hand_made_points():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 5)]
    # (3,4) is dominated by (2,3); (5,5) by everything; the duplicate (2,3)s stay together.
    assert pareto_front(pts, ["min", "min"]) == [0, 1, 3, 4]
    assert pareto_front([(7, 7)], ["min", "min"]) == [0]
    assert pareto_front([], ["min", "min"]) == []
    # Ties on one objective: (1, 2) dominates (1, 3); (1, 2) and (0, 9) trade off.
    assert pareto_front([(1, 3), (1, 2), (0, 9)], ["min", "min"]) == [1, 2]
    # max mode flips the order; NaN never makes the front.
    assert pareto_front([(1, 1), (2, 2), (math.nan, 9)], ["max", "max"]) == [1]
    assert pareto_front([(1, 5), (2, 9)], ["min", "max"]) == [0, 1]
    assert dominates((1, 1), (1, 2), ["min", "min"]) and not dominates(
        (1, 1), (1, 1), ["min", "min"]
    )
    with pytest.raises(ValueError):
        pareto_front([(1, 2)], ["min", "up"])


def _check_report(out):
    for name in ("index.html", "summary.md", "results.csv"):
        assert (out / name).is_file(), name
    pngs = sorted(out.glob("*.png"))
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            w, h = im.size
            assert 400 <= w <= 4000 and 300 <= h <= 4000, (png.name, im.size)
    page = (out / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all((out / r).is_file() for r in refs), refs
    assert {p.name for p in pngs} <= set(refs)
    return {p.name for p in pngs}, page


def test_report_of_a_study_with_every_kind_of_trial(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    statuses = [
        COMPLETED,
        COMPLETED,
        COMPLETED,
        FAILED,
        FAILED,
        STOPPED,
        RUNNING,
        COMPLETED,
    ]
    folder = make_study_folder(tmp_path, root, n_trials=8, checkpoints=2, statuses=statuses)
    assert main(["report", str(folder), "--out", str(tmp_path / "rep")]) == 0
    pngs, page = _check_report(tmp_path / "rep")
    assert {"rate_distortion.png", "knobs.png", "rate_split.png", "learning_curves.png"} <= pngs
    models = {p for p in pngs if p.startswith("model_")}
    assert 1 <= len(models) <= 2  # only trials with a checkpoint get pictures
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "8 of 8" in summary and "2 failed" in summary and "1 stopped" in summary
    assert "## Failed trials" in summary and "training diverged" in summary
    assert "no checkpoint left" in summary  # front trials without weights are noted
    assert "Pareto front" in page and "All trials" in page


def test_report_of_a_single_trial_and_of_a_study_not_started(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    one = make_study_folder(tmp_path / "a", root, n_trials=1, checkpoints=1)
    pngs, _ = _check_report(build_report(one, tmp_path / "rep1"))
    assert "rate_distortion.png" in pngs and any(p.startswith("model_") for p in pngs)
    empty = make_study_folder(tmp_path / "b", root, n_trials=1, statuses=[PENDING])
    out = build_report(empty, tmp_path / "rep0")
    pngs, _ = _check_report(out)
    assert not pngs
    assert "No finished trial yet" in (out / "summary.md").read_text()


def test_report_without_data_skips_pictures_with_a_note(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tvm

    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    folder = make_study_folder(tmp_path, root, n_trials=2, checkpoints=1)
    import shutil

    shutil.rmtree(root)
    monkeypatch.setattr(tvm.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    out = build_report(folder, tmp_path / "rep")
    pngs, _ = _check_report(out)
    assert not any(p.startswith("model_") for p in pngs)
    assert "Model pictures skipped" in (out / "summary.md").read_text()


def test_report_of_a_folder_that_is_not_a_study(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a study folder" in capsys.readouterr().err


def test_report_tolerates_a_torn_result_json_line(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    folder = make_study_folder(tmp_path, root, n_trials=3, checkpoints=0)
    for f in folder.glob("tune/*/result.json"):
        with open(f, "a") as fh:
            fh.write('{"epoch": 9, "val/neg')  # a crash mid-write
    t0 = time.perf_counter()
    _check_report(build_report(folder, tmp_path / "rep"))
    assert time.perf_counter() - t0 < 60


# --- issue 19: a report rewrites only a report folder it made -------------------------------


def _one_trial_study(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    return make_study_folder(tmp_path, root, n_trials=1, checkpoints=0)


def _refused(capsys, *argv) -> str:
    assert main(["report", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae-study: error: ") and err.count("\n") == 1, err
    return err


def test_report_refuses_a_users_folder_and_leaves_it_alone(tmp_path, capsys):
    folder = _one_trial_study(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("index.html", "results.csv", "notes.txt"):
        (mine / name).write_text(f"my {name}\n")
    err = _refused(capsys, folder, "--out", mine)
    assert "not a report output folder" in err and "index.html is in the way" in err
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "notes.txt", "results.csv"]
    assert all((mine / n).read_text() == f"my {n}\n" for n in ("index.html", "results.csv"))


def test_report_refuses_a_file_as_its_folder(tmp_path, capsys):
    folder = _one_trial_study(tmp_path)
    file = tmp_path / "report.txt"
    file.write_text("mine\n")
    assert "is not a folder" in _refused(capsys, folder, "--out", file)
    assert file.read_text() == "mine\n"


def test_report_refuses_the_study_folder_itself(tmp_path, capsys):
    folder = _one_trial_study(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert "is the study folder" in _refused(capsys, folder, "--out", folder)
    assert "is the study folder" in _refused(capsys, folder, "--out", folder / "report")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


@pytest.mark.usefixtures("quick_figures")
def test_report_rebuilds_its_own_folder_and_marks_an_older_one(tmp_path, capsys):
    folder = _one_trial_study(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    assert '"kind": "report"' in (out / "vae_study.json").read_text()
    assert main(["report", str(folder), "--out", str(out)]) == 0
    (out / "vae_study.json").unlink()  # as an older vae_study left it
    assert main(["report", str(folder), "--out", str(out)]) == 0
    assert (out / "vae_study.json").is_file()
    fit_folder = tmp_path / "fit"
    fit_folder.mkdir()
    (fit_folder / "vae_study.json").write_text('{"tool": "vae_study", "kind": "fit", "format": 1}')
    assert "a vae_study fit folder's marker" in _refused(capsys, folder, "--out", fit_folder)


def test_run_refuses_a_users_report_folder_before_it_starts(tmp_path, capsys):
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    (tmp_path / "reports" / "s").mkdir(parents=True)
    (tmp_path / "reports" / "s" / "index.html").write_text("mine\n")
    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: s\noutput: {{dir: {tmp_path / 'runs'}}}\nreport: {{dir: {tmp_path / 'reports'}}}\n"
        f"data: {{root: {root}}}\nsearch: {{space: {{train.beta: {{choice: [0.5, 1.0]}}}}}}\n"
    )
    assert main(["run", str(study)]) == 2
    assert "index.html is in the way" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
