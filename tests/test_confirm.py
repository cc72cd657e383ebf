"""Seed replicates in the report (means with error bars, checked on the plotted data) and the
confirmation stage (search.confirm): its selection without Ray, its config, and a replicated
smoke study that confirms its best configuration under a real local Ray."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import write_mnist
from study_factory import (
    attempts,
    make_study_folder,
    optuna_states,
    read_table,
    slow_trials,
    start_driver,
    tiny_study,
    wait_for,
    write_members,
    write_study,
)
from vae_study import metrics as M
from vae_study.cli import main
from vae_study.config.objectives import Objective
from vae_study.config.study import study_from_dict
from vae_study.errors import ConfigError
from vae_study.records import results as R
from vae_study.records.folder import load_folder
from vae_study.records.layout import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RESULTS_FILE,
    RUNNING,
    STOPPED,
    StudyLayout,
)
from vae_study.records.pareto import pareto_front, spread
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY, SEED_KEY
from vae_study.records.selection import select_configurations
from vae_study.report import figure_files, knobs, rd_plane
from vae_study.report.headline import rd_front
from vae_study.report.page import build_report

VAL = M.VAL_CE_BOUND  # the factory's study: grey-level Bernoulli, selected on val/ce_bound
TEST = M.TEST_CE_BOUND


def _se(xs) -> float:
    """The standard error as a textbook computes it: sample std (ddof=1) over sqrt(n)."""
    xs = np.asarray(xs, dtype=float)
    return float(np.std(xs, ddof=1) / np.sqrt(len(xs)))


# config id -> (beta, latent size, test rates, test distortions, val bounds, test bounds)
# Config 3 has one seed at (12, 84), which would dominate config 1's seeds: on the front of
# the members, but its mean (24, 91.3) is dominated by config 0's (21, 81). Config 5 shares
# config 0's beta and latent size (a knob point of two configurations). Config 4 diverged.
DESIGN = {
    0: (0.2, 2, [20, 21, 22], [80, 82, 81], [101, 102, 103], [100, 101, 102]),
    1: (0.5, 4, [15, 16, 17], [85, 84, 86], [99, 100, 98], [97, 98, 99.5]),
    2: (2.0, 2, [10, 12, 11], [95, 90, 100], [108, 106, 107], [105, 104, 106]),
    3: (5.0, 4, [12, 30, 30], [84, 95, 95], [96, 140, 140], [95, 139, 141]),
    5: (0.2, 2, [23, 24, 28], [79, 78, 77], [104, 105, 99], [103, 104, 98]),
}
FAILED_CONFIG = 4


def _members(design=DESIGN, *, failed=True) -> list[dict]:
    out = []
    for cid, (beta, latent, rates, dists, vals, tests) in design.items():
        for r, (rate, dist, val, test) in enumerate(zip(rates, dists, vals, tests, strict=True)):
            out.append(
                {
                    CONFIG_KEY: cid,
                    REPLICATE_KEY: r,
                    "status": COMPLETED,
                    "train.beta": beta,
                    "model.latent_dim": latent,
                    M.TEST_RATE: rate,
                    M.TEST_DISTORTION: dist,
                    M.TEST_NEG_ELBO: rate + dist,
                    VAL: val,
                    TEST: test,
                    M.TEST_ACTIVE_UNITS: latent,
                }
            )
    if failed:
        for r in range(3):
            out.append(
                {
                    CONFIG_KEY: FAILED_CONFIG,
                    REPLICATE_KEY: r,
                    "status": FAILED if r == 1 else COMPLETED,
                    "train.beta": 1.0,
                    "model.latent_dim": 2,
                    M.TEST_RATE: 1.0,
                    M.TEST_DISTORTION: 1.0,
                    VAL: 1.0,
                    R.ERROR_KEY: "training diverged: the loss is nan" if r == 1 else None,
                }
            )
    return out


def _replicated_folder(tmp_path, *, confirm=None, members=None, replicates=3):
    """A study folder whose results.csv holds one row per member (made by hand)."""
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    folder = make_study_folder(tmp_path, root, n_trials=1, checkpoints=0)
    raw = yaml.safe_load((folder / "study.yaml").read_text())
    raw["search"]["num_trials"] = 6
    if confirm is not None:
        raw["search"]["confirm"] = confirm
    if "replicates" in _search_fields():
        raw["search"]["replicates"] = replicates
    (folder / "study.yaml").write_text(yaml.safe_dump(raw))
    write_members(folder, _members() if members is None else members)
    return folder


def _search_fields() -> set[str]:
    import dataclasses

    from vae_study.config.search import SearchConfig

    return {f.name for f in dataclasses.fields(SearchConfig)}


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to inspect (still saved)."""
    kept = {}

    def keep(fig, path):
        kept[path.name] = fig
        fig.savefig(path, dpi=40)
        return path

    monkeypatch.setattr(figure_files, "save_figure", keep)
    return kept


def _errorbars(ax, label=None):
    """(x segments, y segments) of each errorbar drawn on ``ax``: [[x-e, y], [x+e, y]] and
    [[x, y-e], [x, y+e]], as matplotlib holds them."""
    from matplotlib.container import ErrorbarContainer

    found = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer) and (label is None or c.get_label() == label):
            cols = c.lines[2]
            segs = [np.asarray(col.get_segments()) for col in cols]
            found.append(segs)
    return found


# ---- The rate-distortion plane: means, error bars, the front of the means ---------------


def test_the_rd_plane_plots_configuration_means_with_standard_errors(tmp_path, figures):
    folder = _replicated_folder(tmp_path)
    sf = load_folder(folder)
    assert len(sf.trials) == 18 and len(sf.configs) == 6  # members, configurations
    by_id = {c.trial_id: c for c in sf.configs}
    assert by_id[str(FAILED_CONFIG)].status == FAILED  # one diverged seed: failed config
    assert all(by_id[str(c)].n_seeds == 3 for c in DESIGN)

    build_report(folder, tmp_path / "rep")
    ax = figures["rate_distortion.png"].axes[0]
    (bars,) = _errorbars(ax, rd_plane.RD_ERRORBAR_LABEL)
    xsegs, ysegs = bars
    expected = {}
    for cid, (_, _, rates, dists, *_) in DESIGN.items():
        expected[cid] = (np.mean(rates), np.mean(dists), _se(rates), _se(dists))
    # One bar per finished configuration (the failed one is not plotted), at its mean.
    assert len(xsegs) == len(ysegs) == len(DESIGN)
    got = sorted(
        (
            (x[0][0] + x[1][0]) / 2,  # centre: the mean rate
            x[0][1],  # the mean distortion
            (x[1][0] - x[0][0]) / 2,  # half-width: the rate's standard error
            (y[1][1] - y[0][1]) / 2,
        )
        for x, y in zip(xsegs, ysegs, strict=True)
    )
    assert np.allclose(np.array(got, dtype=float), np.array(sorted(expected.values())))
    # The red staircase is the front of the MEANS: config 3's best seed (12, 84) would be
    # on a front of the members, its mean is dominated.
    means = {cid: v[:2] for cid, v in expected.items()}
    ids = list(means)
    on_front = {ids[i] for i in pareto_front([means[c] for c in ids], ["min", "min"])}
    assert on_front == {0, 1, 2, 5} and 3 not in on_front
    (front_line,) = [ln for ln in ax.lines if "Pareto front" in str(ln.get_label())]
    corners = set(zip(*front_line.get_data(), strict=True))
    assert {tuple(means[c]) for c in on_front} <= {tuple(map(float, p)) for p in corners}
    assert tuple(means[3]) not in corners
    assert {t.trial_id for t in rd_front(sf.configs)} == {str(c) for c in on_front}
    # The data the figure was drawn from says the same.
    pts = rd_plane.rd_points(sf.configs)
    assert pts.has_bar.all() and len(pts.front) == 4


def test_a_study_of_one_seed_per_configuration_draws_no_error_bar(tmp_path, figures):
    # Today's folder: one row per trial, no config_id column.
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    old = make_study_folder(tmp_path / "old", root, n_trials=5, checkpoints=0)
    # A replicated table of one seed each: config_id present, R = 1.
    one = {
        cid: (b, lat, r[:1], d[:1], v[:1], t[:1]) for cid, (b, lat, r, d, v, t) in DESIGN.items()
    }
    new = _replicated_folder(tmp_path / "new", members=_members(one, failed=False), replicates=1)
    for folder in (old, new):
        sf = load_folder(folder)
        assert all(c.n_seeds == 1 and c.error(M.TEST_RATE) is None for c in sf.configs)
        out = build_report(folder, tmp_path / f"rep_{folder.parent.parent.name}")
        ax = figures["rate_distortion.png"].axes[0]
        assert _errorbars(ax) == []  # no bar, not a bar of 0
        assert not rd_plane.rd_points(sf.configs).has_bar.any()
        summary = (out / "summary.md").read_text()
        assert "±" not in summary and "| seeds |" not in summary
        assert (
            "Differences" not in summary and "Differences" not in (out / "index.html").read_text()
        )
        for ax in figures["knobs.png"].axes:
            assert _errorbars(ax) == []
        assert knobs.NO_PAIRS in (out / "index.html").read_text()
        # Rows named by Ray's trial id in today's table, by config_id in a replicated one.
        unit = "trial" if folder == old else "configuration"
        assert f"## Selected {unit}: selected on validation" in summary
    assert len(load_folder(old).configs) == 5  # each row its own configuration


@pytest.mark.usefixtures("quick_figures")
def test_tables_show_mean_and_standard_error_with_the_seeds(tmp_path):
    folder = _replicated_folder(tmp_path)
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    assert "configurations: 6 of 6, 18 runs (seeds) in results.csv" in summary
    # The selected configuration: the best mean val/ce_bound. Config 1 (mean 99) beats
    # config 3's single best seed (96) since config 3's mean is 125.3.
    section = summary.split("## Selected configuration: selected on validation (val/ce_bound)")[1]
    head, _, row = section.strip().splitlines()[:3]
    cells = dict(
        zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")], strict=True)
    )
    assert cells["configuration"] == "1" and cells["seeds"] == "3 of 3"
    mean, se = (float(x) for x in cells["test rate"].split(" ± "))
    assert mean == pytest.approx(16.0) and se == pytest.approx(_se([15, 16, 17]), rel=5e-3)
    # The failed member is listed, with its configuration and replicate.
    assert "- c00004 (failed, configuration 4, replicate 1): training diverged" in summary


# ---- Knob plots: means, the seeds behind each point, bars of paired differences --------


def test_knob_bars_are_paired_differences_from_the_first_point(tmp_path, figures):
    folder = _replicated_folder(tmp_path)
    sf = load_folder(folder)
    searched = sf.study.search.space
    series = knobs.knob_series(sf.configs, "train.beta", M.TEST_RATE, searched)
    (latent2,) = [s for s in series if dict(s.fixed)["model.latent_dim"] == "2"]
    pts = {p.x: p for p in latent2.points}
    assert set(pts) == {0.2, 2.0}
    r0, r5, r2 = (np.array(DESIGN[c][2], dtype=float) for c in (0, 5, 2))
    # beta 0.2, the reference: configurations 0 and 5, six seeds, no bar of its own.
    assert pts[0.2].n == 2 and pts[0.2].n_seeds == 6 and pts[0.2].contrast is None
    assert pts[0.2].mean == pytest.approx((r0.mean() + r5.mean()) / 2)
    # beta 2.0: one configuration of three seeds; its bar is the standard error of its
    # difference from beta 0.2, seed by seed (0.2's level at a seed: the mean of 0 and 5).
    d = r2 - (r0 + r5) / 2
    c = pts[2.0].contrast
    assert pts[2.0].n == 1 and pts[2.0].n_seeds == 3 and c.n == 3
    assert c.mean == pytest.approx(d.mean()) and c.se == pytest.approx(_se(d))
    # Not what the independent formula gives (sqrt(sum se^2) of the two point means).
    independent = math.sqrt(_se(r2) ** 2 + (math.sqrt(_se(r0) ** 2 + _se(r5) ** 2) / 2) ** 2)
    assert c.se != pytest.approx(independent, rel=1e-2)
    # The figure draws that bar at beta 2.0, none at the reference, and says n.
    build_report(folder, tmp_path / "rep")
    ax = next(a for a in figures["knobs.png"].axes if a.get_title() == "beta against test rate R")
    drawn = {
        round(float(seg[0][0]), 6): ((seg[0][1] + seg[1][1]) / 2, (seg[1][1] - seg[0][1]) / 2)
        for (ysegs,) in _errorbars(ax)  # a y error only: one collection of [[x, y-e], [x, y+e]]
        for seg in ysegs
    }
    assert drawn[2.0] == pytest.approx((pts[2.0].mean, c.se)) and 0.2 not in drawn
    assert {"n=6", "n=3"} <= {t.get_text() for t in ax.texts}
    assert "from per-seed paired differences (n = 3 seeds)" in ax.get_xlabel().replace("\n", " ")


# Configurations paired across latent sizes at the same beta (a value two of them share:
# matched exactly): beta 0.5 and 2.0, each at latent 2 and 4. Configuration 6 (latent 4,
# beta 0.5) lost a seed: no mean, never paired.
PAIRED = {
    0: (0.5, 2, [20.0, 23.0, 21.0]),
    1: (0.5, 4, [25.0, 29.0, 26.0]),
    2: (2.0, 2, [10.0, 12.0, 11.0]),
    3: (2.0, 4, [14.0, 15.0, 13.0]),
}


def _paired_members() -> list[dict]:
    out = [
        {
            CONFIG_KEY: cid,
            REPLICATE_KEY: r,
            "status": COMPLETED,
            "train.beta": beta,
            "model.latent_dim": latent,
            M.TEST_RATE: rate,
            M.TEST_DISTORTION: 80.0 - rate,
            VAL: 100.0 + rate,
            TEST: 99.0 + rate,
            M.TEST_ACTIVE_UNITS: latent,
        }
        for cid, (beta, latent, rates) in PAIRED.items()
        for r, rate in enumerate(rates)
    ]
    for r in range(3):
        out.append(
            {
                CONFIG_KEY: 6,
                REPLICATE_KEY: r,
                "status": FAILED if r == 2 else COMPLETED,
                "train.beta": 0.5,
                "model.latent_dim": 4,
                M.TEST_RATE: 500.0,
                M.TEST_ACTIVE_UNITS: 4,
                VAL: 1.0,
            }
        )
    return out


@pytest.mark.usefixtures("quick_figures")
def test_the_differences_table_holds_the_paired_contrasts_of_knob_levels(tmp_path):
    folder = _replicated_folder(tmp_path, members=_paired_members())
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    heading = "## Differences between knob levels, paired by seed"
    assert heading in summary
    words = summary.split(heading)[1].strip().split("\n\n")[0]
    assert "each seed's differences are averaged over them" in words
    assert "t(0.975, n - 1)" in words and "beta: continuous" in words
    _, rows = _md_rows(summary, heading)
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == {M.TEST_RATE, M.TEST_ACTIVE_UNITS}
    rates = {cid: np.array(v[2]) for cid, v in PAIRED.items()}
    d = ((rates[1] - rates[0]) + (rates[3] - rates[2])) / 2  # per seed, over the two cells
    row = by_metric[M.TEST_RATE]
    assert row["difference (b − a)"] == "latent size 4 − latent size 2"
    assert row["cells"] == "2" and row["n (seeds)"] == "3"
    mean, se = (float(x) for x in row["mean difference ± s.e."].split(" ± "))
    assert mean == pytest.approx(d.mean(), rel=1e-3) and se == pytest.approx(_se(d), rel=1e-2)
    low, high = (float(x) for x in row["95% interval (t)"].split(" to "))
    t2 = 4.303  # t_{0.975, 2}
    assert low == pytest.approx(d.mean() - t2 * _se(d), rel=1e-3)
    assert high == pytest.approx(d.mean() + t2 * _se(d), rel=1e-3)
    # Active units: latent size itself, the same at every seed: a difference of 2 exactly.
    assert by_metric[M.TEST_ACTIVE_UNITS]["mean difference ± s.e."] == "2 ± 0"
    assert by_metric[M.TEST_ACTIVE_UNITS]["95% interval (t)"] == "2 to 2"
    page = (out / "index.html").read_text()
    assert "<h2>Differences between knob levels, paired by seed</h2>" in page
    assert "<td>latent size 4 − latent size 2</td>" in page


# ---- The confirmation: selection (no Ray), config, headline -----------------------------


def _config(cid, status=COMPLETED, **means):
    return {CONFIG_KEY: cid, "status": status, **means}


def test_confirmation_selects_the_best_validation_means():
    configs = [
        _config(0, **{VAL: 101.0}),
        _config(1, **{VAL: 99.0}),
        _config(2, **{VAL: 99.0}),  # a tie with 1: the lower id first
        _config(3, FAILED, **{VAL: 50.0}),  # a diverged seed: never a candidate
        _config(4, STOPPED, **{VAL: 60.0}),  # stopped by ASHA
        _config(5, **{VAL: math.nan}),
        _config(6, **{VAL: 100.5}),
    ]
    low = [Objective(VAL, "min")]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, low, 3)] == [1, 2, 6]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, low, 10)] == [1, 2, 6, 0]
    high = [Objective(VAL, "max")]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, high, 1)] == [0]
    assert select_configurations([], low, 2) == []


def test_confirmation_of_two_objectives_spreads_along_the_front_of_the_means():
    rd = [Objective(M.VAL_RATE, "min"), Objective(M.VAL_DISTORTION, "min")]
    points = {0: (5, 100), 1: (10, 80), 2: (20, 60), 3: (30, 50), 4: (40, 45), 5: (25, 90)}
    configs = [_config(c, **{M.VAL_RATE: r, M.VAL_DISTORTION: d}) for c, (r, d) in points.items()]
    # Config 5 is dominated by 2; the front by rate is 0 1 2 3 4.
    assert [c[CONFIG_KEY] for c in select_configurations(configs, rd, 10)] == [0, 1, 2, 3, 4]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, rd, 3)] == [0, 2, 4]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, rd, 2)] == [0, 4]
    assert [c[CONFIG_KEY] for c in select_configurations(configs, rd, 1)] == [0]
    assert spread(list("abcdefg"), 4) == ["a", "c", "e", "g"]


def test_the_confirmation_asks_its_recorded_configurations_with_fresh_seeds(tmp_path):
    """The confirmation's searcher suggests exactly the recorded selection, each once, with
    R fresh seeds (offset search.replicates) and its search configuration id; a second
    searcher over the same record (a resumed driver) suggests only what was not told."""
    import optuna

    from vae_study.records.stage import SELECTED_ATTR, confirm_stage, storage
    from vae_study.study.confirm import planned_points
    from vae_study.study.searcher import StudySearcher

    raw = _tiny_raw(tmp_path, confirm={"top": 2, "replicates": 3}, replicates=2)
    study = study_from_dict(raw)
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    stage = confirm_stage(study, folder)
    selected = [
        {"config_id": 7, "params": {"train.beta": 0.5, "model.latent_dim": 4}},
        {"config_id": 2, "params": {"train.beta": 3.0, "model.latent_dim": 2}},
    ]
    ot = optuna.create_study(study_name=stage.optuna_name, storage=storage(stage))
    ot.set_user_attr(SELECTED_ATTR, selected)
    points = planned_points(study, stage)  # the recorded selection, not a new one
    assert points == {7: selected[0]["params"], 2: selected[1]["params"]}

    def searcher():
        return StudySearcher(
            study,
            stage,
            sampler=optuna.samplers.RandomSampler(seed=0),
            num_configs=len(points),
            points=[{**p, "_config_id": c} for c, p in sorted(points.items())],
            extra={"_replicates": 3, "_seed_offset": 2},
        )

    first = searcher()
    a = first.suggest("ray-a")
    assert a["_config_id"] == 2 and a["train.beta"] == 3.0 and a["model.latent_dim"] == 2
    assert a["_replicates"] == 3 and a["_seed_offset"] == 2
    # A driver killed here: configuration 2 is RUNNING; a new searcher resumes it first,
    # then asks configuration 7, then has nothing more.
    second = searcher()
    assert second.resumed == [a["_optuna_trial"]]
    again = second.suggest("ray-b")
    assert again["_config_id"] == 2 and again["_optuna_trial"] == a["_optuna_trial"]
    b = second.suggest("ray-c")
    assert b["_config_id"] == 7 and b["train.beta"] == 0.5
    assert second.suggest("ray-d") == "FINISHED"


def _tiny_raw(tmp_path, **search):
    raw = tiny_study(tmp_path)
    raw["search"].update(search)
    return raw


@pytest.mark.parametrize(
    ("confirm", "words"),
    [
        ({"top": 0}, "search.confirm.top: got 0"),
        ({"top": 1, "replicates": 1}, "a confirmation with one seed has no error bar"),
        ({"top": 5}, "more configurations than the search tries (search.num_trials=4)"),
        ({"tops": 1}, "unknown key search.confirm.tops"),
        ([1, 2], "search.confirm: expected a mapping"),
    ],
)
def test_bad_confirmation_sections_are_refused(tmp_path, confirm, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        study_from_dict(_tiny_raw(tmp_path, confirm=confirm))


def test_a_confirmation_needs_a_validation_objective(tmp_path):
    raw = _tiny_raw(
        tmp_path,
        confirm={"top": 1, "replicates": 2},
        objectives=[M.TEST_NLL],
        select_on_test=True,
    )
    with pytest.raises(ConfigError, match="a confirmation selects on validation"):
        study_from_dict(raw)
    ok = study_from_dict(_tiny_raw(tmp_path, confirm={"top": 2, "replicates": 2}))
    assert ok.search.confirm.top == 2 and ok.to_dict()["search"]["confirm"] == {
        "top": 2,
        "replicates": 2,
    }
    assert "confirm" not in study_from_dict(_tiny_raw(tmp_path)).to_dict()["search"]


def test_the_headline_is_the_confirmed_test_mean_and_standard_error(tmp_path, figures):
    folder = _replicated_folder(tmp_path, confirm={"top": 2, "replicates": 2})
    before = (build_report(folder, tmp_path / "rep0") / "summary.md").read_text()
    assert "## Confirmed" not in before and "the confirmation has no results yet" in before
    # What the stage would have confirmed: the two best validation means, 1 and 0.
    sf = load_folder(folder)
    rows = [
        {CONFIG_KEY: int(c.trial_id), "status": c.status, VAL: c.value(VAL)} for c in sf.configs
    ]
    chosen = select_configurations(rows, sf.study.search.objectives, 2)
    assert [c[CONFIG_KEY] for c in chosen] == [1, 0]
    confirm_tests = {1: [96.0, 97.5], 0: [100.5, 103.0]}
    members = []
    for cid, tests in confirm_tests.items():
        beta, latent = DESIGN[cid][:2]
        for r, t in enumerate(tests):
            members.append(
                {
                    CONFIG_KEY: cid,
                    REPLICATE_KEY: r,
                    "status": COMPLETED,
                    "train.beta": beta,
                    "model.latent_dim": latent,
                    TEST: t,
                    VAL: t + 1,
                    M.TEST_RATE: 10.0 + r,
                    M.TEST_DISTORTION: 80.0,
                }
            )
    write_members(StudyLayout(folder).confirm_dir, members, seed_offset=3)
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    heading = next(line for line in summary.splitlines() if line.startswith("## Confirmed"))
    assert "test mean ± standard error" in heading
    assert "selected on validation over 3 seeds, confirmed with 2 fresh seeds" in heading
    assert summary.index("## Confirmed") < summary.index("## Selected configuration")
    table = summary.split(heading)[1].strip().splitlines()
    head = [c.strip() for c in table[0].split("|")]
    rows = {
        r[head.index("configuration")]: dict(zip(head, r, strict=True))
        for r in ([c.strip() for c in line.split("|")] for line in table[2:4])
    }
    assert set(rows) == {"0", "1"}
    for cid, tests in confirm_tests.items():
        row = rows[str(cid)]
        assert row["seeds"] == "2 of 2"
        mean, se = (float(x) for x in row["test CE bound"].split(" ± "))
        assert mean == pytest.approx(np.mean(tests), rel=1e-4)
        assert se == pytest.approx(_se(tests), rel=5e-3)
        # Beside it, the validation mean of the search that selected it (3 seeds).
        assert float(row["search val/ce_bound (mean of 3)"]) == pytest.approx(
            np.mean(DESIGN[cid][4]), rel=1e-4
        )
    # Configuration 1 minus 0, seed by seed: (96 - 100.5, 97.5 - 103) = (-4.5, -5.5).
    _, diffs = _md_rows(summary, "## Differences between confirmed configurations")
    (diff,) = diffs
    assert diff["difference (b − a)"] == "configuration 1 − configuration 0"
    assert diff["metric"] == TEST and diff["n (seeds)"] == "2"
    assert diff["mean difference ± s.e."] == "-5 ± 0.5"
    t1 = 12.706  # t_{0.975, 1}
    assert diff["95% interval (t)"] == f"{-5 - t1 * 0.5:.4g} to {-5 + t1 * 0.5:.4g}"
    page = (out / "index.html").read_text()
    assert "confirmed with 2 fresh seeds" in page and "±" in page
    assert "<h2>Differences between confirmed configurations, paired by seed</h2>" in page
    # The R-D plane shows them at their confirmed means, with their own bars.
    ax = figures["rate_distortion.png"].axes[0]
    ((xsegs, ysegs),) = _errorbars(ax, rd_plane.RD_CONFIRMED_LABEL)
    rates = [10.0, 11.0]  # both configurations: replicate r has rate 10 + r, distortion 80
    for x, y in zip(xsegs, ysegs, strict=True):
        assert (x[0][0] + x[1][0]) / 2 == pytest.approx(np.mean(rates))
        assert (x[1][0] - x[0][0]) / 2 == pytest.approx(_se(rates))
        assert y[0][1] == y[1][1] == pytest.approx(80.0)  # a standard error of 0: equal seeds
    assert len(xsegs) == 2


def _md_rows(summary: str, heading_start: str) -> tuple[list[str], list[dict[str, str]]]:
    """(the row cells in order, as dicts by column) of the markdown table under a heading
    (the first block of lines there that is a table: a paragraph may come before it)."""
    heading = next(line for line in summary.splitlines() if line.startswith(heading_start))
    blocks = summary.split(heading)[1].split("\n## ")[0].strip().split("\n\n")
    lines = next((b for b in blocks if b.startswith("|")), "|\n|").splitlines()
    head = [c.strip() for c in lines[0].split("|")]
    rows = [dict(zip(head, [c.strip() for c in x.split("|")], strict=True)) for x in lines[2:]]
    return head, rows


@pytest.mark.usefixtures("quick_figures")
def test_a_failed_configuration_has_no_mean_in_the_tables_or_the_page(tmp_path):
    """Configuration 4 has two completed seeds (test rate 1, distortion 1, val 1) and one
    diverged: failed, 2 of 3, and no number of its survivors anywhere."""
    folder = _replicated_folder(tmp_path)
    sf = load_folder(folder)
    (failed,) = [c for c in sf.configs if c.trial_id == str(FAILED_CONFIG)]
    assert failed.status == FAILED and failed.n_seeds == 2
    for metric in (M.TEST_RATE, M.TEST_DISTORTION, VAL):
        assert math.isnan(failed.value(metric)) and failed.error(metric) is None
    from vae_study.records.replicates import read_configs, write_configs

    path = tmp_path / "configs.csv"
    rows = R.read_results(StudyLayout(folder).results_file).to_dict("records")
    write_configs(path, rows, param_keys=["train.beta"], metrics=[M.TEST_RATE, VAL], replicates=3)
    frame = read_configs(path).set_index(CONFIG_KEY)
    assert frame.loc[FAILED_CONFIG, [M.TEST_RATE, VAL]].isna().all()
    assert frame.loc[FAILED_CONFIG, "n_finished"] == 2 and frame.loc[0, [M.TEST_RATE]].notna().all()
    out = build_report(folder, tmp_path / "rep")
    page = (out / "index.html").read_text()
    (row,) = re.findall(r"<tr><td>4</td>(.*?)</tr>", page)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[0] == "failed" and cells[1] == "2 of 3"
    assert not any(re.fullmatch(r"[0-9.]+( ± [0-9.e-]+)?", c) for c in cells[4:]), cells


@pytest.mark.usefixtures("quick_figures")
def test_a_confirmed_configuration_whose_fresh_seed_diverged_is_failed_and_unranked(tmp_path):
    folder = _replicated_folder(tmp_path, confirm={"top": 2, "replicates": 2})
    members = []
    for cid, seeds in {
        1: [(COMPLETED, 96.0), (FAILED, None)],
        0: [(COMPLETED, 100.5)] * 2,
    }.items():
        beta, latent = DESIGN[cid][:2]
        for r, (status, t) in enumerate(seeds):
            members.append(
                {
                    CONFIG_KEY: cid,
                    REPLICATE_KEY: r,
                    "status": status,
                    "train.beta": beta,
                    "model.latent_dim": latent,
                    TEST: t,
                    VAL: None if t is None else t + 1,
                    R.ERROR_KEY: "training diverged: the loss is nan" if t is None else None,
                }
            )
    write_members(StudyLayout(folder).confirm_dir, members, seed_offset=3)
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    _, rows = _md_rows(summary, "## Confirmed")
    assert [r["configuration"] for r in rows] == ["0", "1"]  # the failed one last
    assert rows[0]["test CE bound"].startswith("100.5")
    assert rows[1]["status"] == "failed: training diverged: the loss is nan"
    assert rows[1]["seeds"] == "1 of 2" and rows[1]["test CE bound"] == ""
    assert "96" not in summary.split("## Confirmed")[1].split("## ")[0]
    assert "optimistic" not in summary  # confirmed: the headline is the fresh seeds'


# ---- End to end under a real local Ray --------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_replicated_study_confirms_its_best_configuration(tmp_path, figures):
    raw = tiny_study(
        tmp_path,
        **{
            "search.num_trials": 2,
            "search.max_concurrent": 1,
            "search.replicates": 2,
            "search.confirm": {"top": 1, "replicates": 2},
            "train.epochs": 1,
            "report.enabled": True,
            "report.dir": str(tmp_path / "reports"),
        },
    )
    assert main(["run", str(write_study(tmp_path, raw))]) == 0
    folder = tmp_path / "runs" / "tiny"
    search = R.read_results(folder / RESULTS_FILE)
    assert len(search) == 4 and set(search["status"]) == {COMPLETED}
    confirmed = R.read_results(StudyLayout(folder).confirm_dir / RESULTS_FILE)
    assert len(confirmed) == 2 and set(confirmed["status"]) == {COMPLETED}
    # The best configuration on the validation mean, with seeds never used in the search.
    sf = load_folder(folder)
    rows = [
        {CONFIG_KEY: int(c.trial_id), "status": c.status, M.VAL_NLL: c.value(M.VAL_NLL)}
        for c in sf.configs
    ]
    (best,) = select_configurations(rows, sf.study.search.objectives, 1)
    assert set(confirmed[CONFIG_KEY]) == {best[CONFIG_KEY]}
    assert sorted(confirmed[REPLICATE_KEY]) == [0, 1]
    assert sorted(confirmed[SEED_KEY]) == [2, 3]
    assert not set(confirmed[SEED_KEY]) & set(search[SEED_KEY])
    # Trained with those seeds: the same configuration's numbers differ from the search's
    # (the same seed on the CPU would give the same numbers).
    mine = search[search[CONFIG_KEY] == best[CONFIG_KEY]]
    assert not set(confirmed[M.TEST_NLL]) & set(mine[M.TEST_NLL])
    # The headline: the confirmed test mean ± se over 2 seeds, numbers of its members.
    summary = (tmp_path / "reports" / "tiny" / "summary.md").read_text()
    heading = next(line for line in summary.splitlines() if line.startswith("## Confirmed"))
    assert "selected on validation over 2 seeds, confirmed with 2 fresh seeds" in heading
    table = summary.split(heading)[1].strip().splitlines()
    head = [c.strip() for c in table[0].split("|")]
    row = dict(zip(head, [c.strip() for c in table[2].split("|")], strict=True))
    mean, se = (float(x) for x in row["test NLL"].split(" ± "))
    assert mean == pytest.approx(confirmed[M.TEST_NLL].mean(), rel=1e-3)
    assert se == pytest.approx(_se(confirmed[M.TEST_NLL]), rel=2e-2)
    # The plotted error bars of the search's configurations (2 seeds each) are there.
    ax = figures["rate_distortion.png"].axes[0]
    (bars,) = _errorbars(ax, rd_plane.RD_ERRORBAR_LABEL)
    assert len(bars[0]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_a_study_stopped_in_its_confirmation_resumes_it_and_never_searches_again(tmp_path, stop):
    raw = slow_trials(
        tmp_path,
        epochs=12,
        **{
            "search.num_trials": 2,
            "search.replicates": 2,
            "search.confirm": {"top": 1, "replicates": 2},
        },
    )
    path = write_study(tmp_path, raw)
    folder = tmp_path / "runs" / "tiny"
    cdir = StudyLayout(folder).confirm_dir
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}

    def confirming():
        table = read_table(cdir)
        if table is None:
            return None
        mid = table[(table["status"] == RUNNING) & (table["epoch"].fillna(0) >= 2)]
        return not mid.empty or None

    def search_files():
        return {p: p.read_bytes() for p in sorted((folder / "tune").glob("trial_*/result.json"))}

    proc, log = start_driver(tmp_path, path, "first.log", env)
    try:
        wait_for(proc, log, confirming, timeout=400, what=stop)
        search_before = R.read_results(folder / RESULTS_FILE)
        files_before = search_files()
        if stop == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
            proc.wait()
        else:
            os.kill(proc.pid, signal.SIGINT)  # the driver alone, as a terminal's Ctrl-C
            assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    if stop == "SIGINT":  # paused: the confirmation's running members are interrupted
        paused = R.read_results(cdir / RESULTS_FILE)
        assert INTERRUPTED in set(paused["status"]) and FAILED not in set(paused["status"])

    again = subprocess.run(
        [sys.executable, "-m", "vae_study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"continuing configuration\(s\) \d+ .* in .*confirm", again.stdout)
    # The search is not run again: its table and every trial's reports are as they were.
    search_after = R.read_results(folder / RESULTS_FILE)
    key = ["trial_id", "member", M.TEST_NLL]

    def numbers(table):
        return table[key].sort_values(key[:2]).reset_index(drop=True)

    assert numbers(search_after).equals(numbers(search_before))
    assert search_files() == files_before
    assert optuna_states(folder, "tiny") == {"COMPLETE": 2}
    # The confirmation finished from its checkpoint, not from epoch 1.
    confirmed = R.read_results(cdir / RESULTS_FILE)
    assert len(confirmed) == 2 and set(confirmed["status"]) == {COMPLETED}
    assert sorted(confirmed["seed"]) == [2, 3]
    (cid,) = set(confirmed["config_id"])
    for r in (0, 1):
        starts = attempts(cdir, cid, r)
        assert len(starts) == 2 and starts[1]["from_epoch"] > 1, starts


def test_a_confirmation_can_be_added_to_a_study_until_it_has_run(tmp_path):
    from vae_study.errors import StudyError
    from vae_study.records.lock import release_folder
    from vae_study.records.prepare import prepare_folder

    def prepare(**search):
        folder, resume = prepare_folder(study_from_dict(_tiny_raw(tmp_path, **search)), fresh=False)
        release_folder(folder)
        return folder, resume

    folder, resume = prepare()
    assert not resume
    # The search is the same: a confirmation may be added, or changed before it runs.
    assert prepare(confirm={"top": 1, "replicates": 2}) == (folder, True)
    assert prepare(confirm={"top": 2, "replicates": 3})[1]
    assert yaml.safe_load((folder / "study.yaml").read_text())["search"]["confirm"] == {
        "top": 2,
        "replicates": 3,
    }
    # Anything else in the search section is another study, confirmation or not.
    with pytest.raises(StudyError, match="another search section"):
        prepare(confirm={"top": 2, "replicates": 3}, num_trials=3)
    # Once confirm/ exists, its experiment is that confirmation.
    StudyLayout(folder).confirm_dir.mkdir()
    with pytest.raises(StudyError, match="another search section"):
        prepare(confirm={"top": 1, "replicates": 2})
    assert prepare(confirm={"top": 2, "replicates": 3})[1]


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_confirmation_added_to_a_finished_study_runs_alone(tmp_path):
    over = {
        "search.num_trials": 2,
        "search.max_concurrent": 1,
        "search.replicates": 2,
        "train.epochs": 1,
    }
    assert main(["run", str(write_study(tmp_path, tiny_study(tmp_path, **over)))]) == 0
    folder = tmp_path / "runs" / "tiny"
    files = {p: p.read_bytes() for p in sorted((folder / "tune").glob("trial_*/result.json"))}
    assert len(files) == 2 and not StudyLayout(folder).confirm_dir.exists()
    over["search.confirm"] = {"top": 1, "replicates": 2}
    assert main(["run", str(write_study(tmp_path, tiny_study(tmp_path, **over)))]) == 0
    after = {p: p.read_bytes() for p in sorted((folder / "tune").glob("trial_*/result.json"))}
    assert after == files  # the search ran nothing again
    assert optuna_states(folder, "tiny") == {"COMPLETE": 2}
    confirmed = R.read_results(StudyLayout(folder).confirm_dir / RESULTS_FILE)
    assert len(confirmed) == 2 and set(confirmed["status"]) == {COMPLETED}
    assert sorted(confirmed[SEED_KEY]) == [2, 3]


def test_a_stopped_configuration_keeps_its_own_numbers_in_the_report(tmp_path):
    """A configuration none of whose seeds finished (ASHA stopped it) has no mean over
    finished seeds; the report shows its member's numbers at the epoch it stopped, not
    blanks."""
    members = [
        {
            CONFIG_KEY: 0,
            REPLICATE_KEY: 0,
            "status": STOPPED,
            "train.beta": 2.0,
            "model.latent_dim": 2,
            M.VAL_NEG_ELBO: 123.5,
            M.VAL_RATE: 3.25,
        },
        {
            CONFIG_KEY: 1,
            REPLICATE_KEY: 0,
            "status": COMPLETED,
            "train.beta": 1.0,
            "model.latent_dim": 2,
            M.VAL_NEG_ELBO: 110.0,
            M.VAL_RATE: 5.0,
            VAL: 100.0,
            TEST: 101.0,
        },
    ]
    folder = _replicated_folder(tmp_path, members=members, replicates=1)
    configs = {c.metrics[CONFIG_KEY]: c for c in load_folder(folder).configs}
    assert configs[0].status == STOPPED
    assert configs[0].value(M.VAL_NEG_ELBO) == 123.5 and configs[0].value(M.VAL_RATE) == 3.25
    assert configs[1].value(M.VAL_NEG_ELBO) == 110.0
