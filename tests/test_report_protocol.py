"""The report under the evaluation protocol: selection on validation, numbers named by what
they are, the bound gap on the same examples, and knob plots that compare matched trials."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from conftest import write_mnist
from study_factory import make_study_folder
from vae_study import metrics as M
from vae_study.config.space import Param
from vae_study.records import results as R
from vae_study.records.folder import load_folder
from vae_study.records.layout import COMPLETED, FAILED, RESULTS_FILE
from vae_study.records.trial import Trial
from vae_study.report import figure_files, knob_matching, knob_plots, knobs
from vae_study.report.headline import rd_front, study_front
from vae_study.report.page import build_report

BETA = Param("train.beta", "log_uniform", low=0.05, high=20.0)  # 15 bins of 1.49x
LATENT = Param("model.latent_dim", "choice", values=(2, 8, 32))
K = Param("train.k", "choice", values=(1, 5))
SEARCHED = (BETA, LATENT, K)
NLL = M.bound_key("test", M.QUANTITY_NLL)


def _trial(
    tid: str, beta: float, latent: int, k: int, status: str = COMPLETED, **metrics: float
) -> Trial:
    return Trial(
        tid,
        status,
        {"train.beta": beta, "model.latent_dim": latent, "train.k": k, "train.objective": "elbo"},
        dict(metrics),
    )


def _confounded() -> list[Trial]:
    """The beta sweep's trap: TPE paired K=5 with latent sizes 2 and 8, K=1 with 32. The NLL
    depends on the latent size only, so a plot of K that pools them shows K=5 worse."""
    nll = {2: 120.0, 8: 100.0, 32: 95.0}
    design = [
        (0.3, 2, 5),
        (2.0, 2, 5),
        (0.5, 8, 5),
        (6.0, 8, 5),
        (0.4, 32, 1),
        (3.0, 32, 1),
        (0.1, 32, 1),
    ]
    return [
        _trial(f"c{i}", b, lat, k, **{NLL: nll[lat], M.TEST_RATE: 10.0 / b})
        for i, (b, lat, k) in enumerate(design)
    ]


def _settings(series: knobs.KnobSeries, knob: str, trials: list[Trial]) -> set[tuple]:
    """The settings (value or bin) of the other knobs over the trials behind a series."""
    by_id = {t.trial_id: t for t in trials}
    return {
        tuple(
            knob_matching._level(p, by_id[tid].params[p.key])[1] for p in SEARCHED if p.key != knob
        )
        for pt in series.points
        for tid in pt.trial_ids
    }


def test_a_confounded_design_has_no_matched_k_pairs():
    trials = _confounded()
    pooled = {
        k: sum(t.value(NLL) for t in trials if t.k == k) / sum(t.k == k for t in trials)
        for k in (1, 5)
    }
    assert pooled[5] - pooled[1] > 10  # what the old pooled plot drew: K=5 "worse"
    assert knobs.knob_series(trials, "train.k", NLL, SEARCHED) == []
    (panel, gap_panel) = [
        p for p in knobs.knob_panels(trials, SEARCHED, M.QUANTITY_NLL) if p.knob == "train.k"
    ]
    assert panel.metric == NLL and panel.series == ()
    assert panel.message.startswith(knobs.NO_MATCH)
    assert "latent size" in panel.message and "beta" in panel.message
    assert gap_panel.message == f"no finished trial reports {M.TEST_BOUND_GAP} yet"


def test_k_is_compared_only_at_matched_latent_size_and_beta_bin():
    trials = _confounded() + [
        _trial("m1", 0.45, 8, 1, **{NLL: 104.0}),  # pairs with c2 (K=5, latent 8, beta .5)
        _trial("m2", 0.41, 8, 5, **{NLL: 98.0}),  # a second K=5 trial in that cell
        _trial("m3", 0.42, 8, 1, status=FAILED, **{NLL: 1.0}),  # never plotted
        _trial("m4", 0.48, 8, 1, **{NLL: math.nan}),  # no value: not counted in n
        _trial("m5", 0.6, 8, 1, **{NLL: 90.0}),  # the next bin: never beside beta 0.5
    ]
    series = knobs.knob_series(trials, "train.k", NLL, SEARCHED)
    assert len(series) == 1
    (s,) = series
    assert dict(s.fixed) == {"train.beta": "in [0.368, 0.549)", "model.latent_dim": "8"}
    assert [(p.x, p.n, sorted(p.trial_ids)) for p in s.points] == [
        (1, 1, ["m1"]),
        (5, 2, ["c2", "m2"]),
    ]
    assert s.points[0].mean == pytest.approx(104.0)
    assert s.points[1].mean == pytest.approx(99.0)  # (100 + 98) / 2
    assert "latent size 8" in s.label and "beta in [0.368, 0.549)" in s.label
    for knob in ("train.k", "train.beta", "model.latent_dim"):
        for s in knobs.knob_series(trials, knob, NLL, SEARCHED):
            assert len(_settings(s, knob, trials)) == 1, (knob, s)  # never mixes other knobs
            assert len({p.x for p in s.points}) == len(s.points) >= 2


def test_beta_series_are_split_by_latent_size_and_k():
    trials = _confounded()
    series = knobs.knob_series(trials, "train.beta", M.TEST_RATE, SEARCHED)
    # latent 2 / K 5: betas .3 and 2; latent 8 / K 5: .5 and 6; latent 32 / K 1: three.
    got = {
        (dict(s.fixed)["model.latent_dim"], dict(s.fixed)["train.k"]): [p.x for p in s.points]
        for s in series
    }
    assert got == {("2", "5"): [0.3, 2.0], ("8", "5"): [0.5, 6.0], ("32", "1"): [0.1, 0.4, 3.0]}
    assert all(p.n == 1 for s in series for p in s.points)


def test_the_gap_panel_plots_test_bound_gap_never_a_subtraction():
    # -ELBO on all test examples minus the bound on a subset would give 10 and 20 here.
    trials = [
        _trial("a", 1.0, 8, 1, **{M.TEST_NEG_ELBO: 110.0, NLL: 100.0, M.TEST_BOUND_GAP: 2.0}),
        _trial("b", 1.0, 8, 5, **{M.TEST_NEG_ELBO: 120.0, NLL: 100.0, M.TEST_BOUND_GAP: 3.5}),
    ]
    searched = (K,)
    gap = [
        p
        for p in knobs.knob_panels(trials, searched, M.QUANTITY_NLL)
        if p.metric == M.TEST_BOUND_GAP
    ]
    assert len(gap) == 1 and len(gap[0].series) == 1
    assert [(p.x, p.mean) for p in gap[0].series[0].points] == [(1, 2.0), (5, 3.5)]


def test_the_bound_is_named_by_its_quantity():
    trials = [
        _trial("a", 1.0, 8, 1, **{M.TEST_CE_BOUND: 90.0, M.TEST_NLL: 1.0}),
        _trial("b", 1.0, 8, 5, **{M.TEST_CE_BOUND: 88.0, M.TEST_NLL: 2.0}),
    ]
    (ce, _) = knobs.knob_panels(trials, (K,), M.QUANTITY_CROSS_ENTROPY)
    assert ce.metric == M.TEST_CE_BOUND and "not a likelihood" in ce.ylabel
    assert "NLL" not in ce.ylabel
    assert [p.mean for p in ce.series[0].points] == [90.0, 88.0]
    (nll, _) = knobs.knob_panels(trials, (K,), M.QUANTITY_NLL)
    assert nll.metric == M.TEST_NLL and "NLL" in nll.ylabel


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to inspect (still saved)."""
    kept = {}

    def keep(fig, path):
        kept[path.name] = fig
        fig.savefig(path, dpi=40)
        return path

    monkeypatch.setattr(figure_files, "save_figure", keep)
    return kept  # plain Figure objects: nothing to close, pyplot never sees them


def test_knob_figure_has_only_the_panels_it_needs(tmp_path, figures):
    trials = _confounded()
    assert (
        knob_plots.knobs(trials, tmp_path / "k.png", searched=SEARCHED, quantity=M.QUANTITY_NLL)
        is not None
    )
    axes = figures["k.png"].axes
    assert len(axes) == 6
    k_axis = next(ax for ax in axes if ax.get_title().startswith("K against test NLL"))
    assert not k_axis.lines  # nothing drawn for K: no matched pairs
    assert any(t.get_text().startswith(knobs.NO_MATCH) for t in k_axis.texts)
    # Latent size alone: its two panels; a one-value choice or an unknown key: no figure.
    assert (
        knob_plots.knobs(trials, tmp_path / "l.png", searched=(LATENT,), quantity=M.QUANTITY_NLL)
        is not None
    )
    assert [ax.get_title() for ax in figures["l.png"].axes] == [
        "latent size against test rate R",
        "latent size against test active units",
    ]
    lr = Param("train.lr", "log_uniform", low=1e-4, high=1e-2)
    one = Param("train.k", "choice", values=(5,))
    assert knobs.varied_knobs((lr, one)) == []
    assert (
        knob_plots.knobs(trials, tmp_path / "n.png", searched=(lr, one), quantity=M.QUANTITY_NLL)
        is None
    )
    # A searched key that is not a knob panel is still matched on, with its bins said.
    text = knob_matching.matching_text((BETA, LATENT, lr))
    assert "latent size by exact value" in text and "beta in log-spaced bins of at most" in text
    assert "train.lr in log-spaced bins of at most 1.5x (12 bins of 1.47x from 0.0001 to 0.01)" in (
        text
    )


# ---- The whole report from a study folder ----------------------------------------------


def _folder(tmp_path, **study_changes):
    """A study folder of 8 completed trials (no training); ``study_changes`` edits its
    search section. Returns the folder and its results table."""
    root = write_mnist(tmp_path / "data", n_train=300, n_test=100)
    folder = make_study_folder(tmp_path, root, n_trials=8, checkpoints=0)
    if study_changes:
        raw = yaml.safe_load((folder / "study.yaml").read_text())
        raw["search"].update(study_changes)
        (folder / "study.yaml").write_text(yaml.safe_dump(raw))
    return folder, pd.read_csv(folder / RESULTS_FILE, dtype={"trial_id": str})


def _rewrite(folder, table, objectives):
    rows = [
        {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
        for r in table.to_dict("records")
    ]
    R.write_results(folder / RESULTS_FILE, rows, ["train.beta", "model.latent_dim"], objectives)


@pytest.mark.usefixtures("quick_figures")
def test_the_selected_trial_is_chosen_on_validation_and_shown_with_both(tmp_path):
    folder, table = _folder(tmp_path)
    # Trial 3 is best on test but not on validation; trial 5 is best on validation.
    table[M.TEST_CE_BOUND] = 90.0
    table.loc[3, M.TEST_CE_BOUND] = 50.0
    table[M.VAL_CE_BOUND] = 95.0
    table.loc[5, M.VAL_CE_BOUND] = 60.0
    table[M.TEST_BOUND_GAP] = 3.0
    table.loc[5, M.TEST_BOUND_GAP] = 1.25
    _rewrite(folder, table, [(M.VAL_CE_BOUND, "min")])
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    section = summary.split("## Selected trial: selected on validation (val/ce_bound)")[1]
    head, _, row = section.strip().splitlines()[:3]
    cells = dict(
        zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")], strict=True)
    )
    assert cells["trial"] == table.loc[5, "trial_id"]
    assert cells["val CE bound"] == "60" and cells["test CE bound"] == "90"
    assert cells["test gap -ELBO - bound"] == "1.25"  # test/bound_gap, not -ELBO - bound
    assert float(cells["val -ELBO"]) == pytest.approx(table.loc[5, M.VAL_NEG_ELBO], rel=1e-3)
    assert {"val rate", "val distortion", "test rate", "test distortion"} <= set(cells)
    assert "NLL" not in head and "selects on test metrics" not in summary
    # Not confirmed: the headline says the selected trial's test number is optimistic, and
    # names the key that fixes it.
    assert "test numbers are optimistic" in summary and "add search.confirm" in summary
    assert summary.index("optimistic") < summary.index("## Selected trial")
    assert "test numbers are optimistic" in (out / "index.html").read_text()
    # What the numbers are and which examples each was computed on.
    assert "a Bernoulli cross-entropy on grey levels" in summary and "not a likelihood" in summary
    assert "on the first 100 test examples (test/nll_examples)" in summary
    assert "eval.surgery_examples = 60" in summary
    # The factory's validation split holds 50 examples: val/ce_bound can use no more.
    assert (
        "val/ce_bound on the first 50 validation examples (eval.val_examples = 1000, "
        "data.val_size = 50) with eval.val_k = 1000"
    ) in summary
    page = (out / "index.html").read_text()
    assert "Selected trial: selected on validation (val/ce_bound)" in page
    assert "not a likelihood" in page and "test/nll_examples" in page
    assert "<th>val CE bound</th>" in page and "<th>test CE bound</th>" in page


@pytest.mark.usefixtures("quick_figures")
def test_a_study_that_selects_on_test_says_so_with_a_warning(tmp_path):
    folder, _ = _folder(
        tmp_path, objectives=[{"metric": M.TEST_CE_BOUND, "mode": "min"}], select_on_test=True
    )
    with pytest.warns(UserWarning, match="select_on_test"):
        out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    assert "## Selected trial: selected on test (search.select_on_test)" in summary
    assert "> **Warning: this study selects on test metrics (test/ce_bound" in summary
    assert "selected on validation" not in summary
    assert (
        '<p class="warn">Warning: this study selects on test metrics'
        in (out / "index.html").read_text()
    )


def test_a_multi_objective_report_shows_the_validation_front_and_the_test_front(tmp_path, figures):
    objectives = [
        {"metric": M.VAL_RATE, "mode": "min"},
        {"metric": M.VAL_DISTORTION, "mode": "min"},
    ]
    folder, table = _folder(tmp_path, objectives=objectives)
    # On the test front but dominated on validation: trial 0's validation numbers worsened.
    on_test = {t.trial_id for t in rd_front(load_folder(folder).trials)}
    worst = table.index[table["trial_id"] == sorted(on_test)[0]][0]
    table.loc[worst, [M.VAL_RATE, M.VAL_DISTORTION]] = [1e3, 1e3]
    _rewrite(folder, table, [(o["metric"], o["mode"]) for o in objectives])
    sf = load_folder(folder)
    chosen = {t.trial_id for t in study_front(sf)}
    assert chosen and table.loc[worst, "trial_id"] not in chosen
    assert chosen == {t.trial_id for t in sf.trials if t.pareto}
    assert table.loc[worst, "trial_id"] in {t.trial_id for t in rd_front(sf.trials)}
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    words = "Pareto set on the study's objectives (val/rate, val/distortion; validation)"
    section = summary.split(f"## {words}")[1].split("##")[0]
    assert {
        line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| 0")
    } == chosen
    assert "## Rate-distortion Pareto front on test (rate, distortion)" in summary
    legend = [t.get_text() for t in figures["rate_distortion.png"].axes[0].get_legend().texts]
    assert "Pareto front of the test (rate, distortion) shown" in legend and words in legend


@pytest.mark.usefixtures("quick_figures")
def test_a_density_likelihood_reports_an_nll_with_bits_per_dim(tmp_path):
    folder, table = _folder(tmp_path)
    raw = yaml.safe_load((folder / "study.yaml").read_text())
    raw["model"]["likelihood"] = "gaussian"
    raw["search"]["objectives"] = [{"metric": M.VAL_NLL, "mode": "min"}]
    (folder / "study.yaml").write_text(yaml.safe_dump(raw))
    table = table.drop(columns=[M.TEST_NLL, M.VAL_NLL]).rename(
        columns={M.TEST_CE_BOUND: M.TEST_NLL, M.VAL_CE_BOUND: M.VAL_NLL}
    )
    table[M.TEST_BPD] = 1.5
    table[M.VAL_BPD] = 1.6
    _rewrite(folder, table, [(M.VAL_NLL, "min")])
    out = build_report(folder, tmp_path / "rep")
    summary = (out / "summary.md").read_text()
    assert "selected on validation (val/nll)" in summary
    assert "the bound -L_K is test/nll" in summary and "negative log-likelihood" in summary
    assert "with bits/dim (test/bpd, val/bpd)" in summary
    head = next(line for line in summary.splitlines() if line.startswith("| trial"))
    assert "| test NLL | test bits/dim |" in head and "| val NLL | val bits/dim |" in head
    assert "CE bound" not in summary and "not a likelihood" not in summary
