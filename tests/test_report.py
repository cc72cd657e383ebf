"""The report: the Pareto front on hand-made points, and a whole report from a study folder."""

from __future__ import annotations

import math
import re
import time

import pytest
from PIL import Image

from conftest import write_mnist
from study_factory import make_study_folder
from vae_study import results as R
from vae_study.cli import main
from vae_study.pareto import dominates, pareto_front
from vae_study.report import build_report


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
        R.COMPLETED,
        R.COMPLETED,
        R.COMPLETED,
        R.FAILED,
        R.FAILED,
        R.STOPPED,
        R.RUNNING,
        R.COMPLETED,
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
    empty = make_study_folder(tmp_path / "b", root, n_trials=1, statuses=[R.PENDING])
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
