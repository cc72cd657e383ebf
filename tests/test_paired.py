"""Paired statistics over seeds: the t quantile, contrasts of per-seed differences, and the
matched cells of the knob plots (never wider than MAX_BIN_FACTOR in a continuous key)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from vae_study import metrics as M
from vae_study.config.space import Param
from vae_study.records.layout import COMPLETED, FAILED
from vae_study.records.replicates import REPLICATE_KEY, SEED_KEY, mean_se
from vae_study.records.trial import Trial
from vae_study.report import knob_matching, knobs, paired

NLL = M.bound_key("test", M.QUANTITY_NLL)
BETA = Param("train.beta", "log_uniform", low=0.05, high=20.0)  # the beta sweep's range
LATENT = Param("model.latent_dim", "choice", values=(2, 8))
K = Param("train.k", "choice", values=(1, 5))
SEARCHED = (BETA, LATENT, K)


def _config(cid, values, *, status=COMPLETED, beta=1.0, latent=2, k=1) -> Trial:
    """A configuration of len(values) seeds (seed 7 + r) with ``NLL`` = values[r]; a failed
    one has its second member failed and no mean, as ``records.configurations``
    makes it."""
    params = {"train.beta": beta, "model.latent_dim": latent, "train.k": k}
    params["train.objective"] = "elbo"
    members = [
        Trial(
            f"c{cid}",
            FAILED if status == FAILED and r == 1 else COMPLETED,
            params,
            {SEED_KEY: 7 + r, REPLICATE_KEY: r, NLL: v},
        )
        for r, v in enumerate(values)
    ]
    mean, se, n = mean_se(values)
    return Trial(
        str(cid),
        status,
        params,
        {NLL: mean if status == COMPLETED else None},
        se={NLL: se if status == COMPLETED else None},
        n_seeds=n,
        n_replicates=len(values),
        members=members,
    )


def _by_hand(d) -> tuple[float, float, float, float]:
    """(mean, se, low, high) of per-seed differences as a textbook computes them."""
    d = np.asarray(d, dtype=float)
    se = float(np.std(d, ddof=1) / np.sqrt(len(d)))
    t = {3: 4.303, 4: 3.182}[len(d)]  # t_{0.975, n-1} from a table, by n
    return float(d.mean()), se, float(d.mean() - t * se), float(d.mean() + t * se)


@pytest.mark.parametrize(
    ("df", "t"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045), (200, 1.972)],
)
def test_the_t_quantile_is_the_tables(df, t):
    assert paired.t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)


def test_the_t_quantile_at_other_levels_and_its_refusals():
    assert paired.t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)
    assert paired.t_quantile(0.9, 7) == pytest.approx(1.415, abs=5e-4)
    assert paired.t_quantile(0.975, 10**4) == pytest.approx(1.960, abs=5e-4)  # the normal's
    with pytest.raises(ValueError, match="df must be an integer >= 1, got 0"):
        paired.t_quantile(0.975, 0)
    with pytest.raises(ValueError, match=r"p must be in \(0.5, 1\), got 0.3"):
        paired.t_quantile(0.3, 4)


def test_a_contrast_of_fewer_than_two_seeds_is_none():
    assert paired.contrast([1.5]) is None
    assert paired.contrast([]) is None
    # Two configurations of one seed each: nothing to pair.
    assert paired.paired_contrast([([_config(0, [1.0])], [_config(1, [2.0])])], NLL) is None


# Cell latent 2 (beta 1, shared by four configurations: matched exactly): K=1 has two
# configurations (their per-seed mean is the level), K=5 one; configuration 9, K=5, failed
# a seed and is left out. Cell latent 8: one configuration per level. The seeds move every
# configuration together (seed 8 high, seed 9 low): paired differences cancel that.
SEEDS = {
    0: dict(values=[100.0, 104.0, 98.0, 103.0], latent=2, k=1),
    1: dict(values=[101.0, 105.0, 99.0, 102.0], latent=2, k=1),
    2: dict(values=[97.0, 102.0, 95.0, 100.0], latent=2, k=5),
    3: dict(values=[90.0, 93.0, 88.0, 95.0], latent=8, k=1),
    4: dict(values=[88.0, 90.0, 87.0, 92.0], latent=8, k=5),
}


def _table() -> list[Trial]:
    configs = [_config(cid, **c) for cid, c in SEEDS.items()]
    return configs + [_config(9, [10.0, 500.0, 10.0, 10.0], status=FAILED, latent=2, k=5)]


def test_the_paired_error_of_a_knob_contrast_is_the_per_seed_difference_by_hand():
    configs = _table()
    v = {cid: np.array(c["values"]) for cid, c in SEEDS.items()}
    d_low = v[2] - (v[0] + v[1]) / 2  # latent 2: K=5 minus the K=1 level, seed by seed
    d_high = v[4] - v[3]  # latent 8
    # The differences table: both cells, each seed's differences averaged over them.
    (row,) = knobs.knob_differences(configs, SEARCHED, M.QUANTITY_NLL)
    assert (row.knob, row.metric, row.a, row.b) == ("train.k", NLL, "1", "5")
    c = row.contrast
    mean, se, low, high = _by_hand((d_low + d_high) / 2)
    assert (c.n, c.cells) == (4, 2)
    assert c.mean == pytest.approx(mean)
    assert c.se == pytest.approx(se)
    assert (c.low, c.high) == (pytest.approx(low, abs=2e-3), pytest.approx(high, abs=2e-3))
    # The knob plot: in the latent-2 line, K=5's bar is its paired difference from K=1.
    series = knobs.knob_series(configs, "train.k", NLL, SEARCHED)
    (line,) = [s for s in series if dict(s.fixed)["model.latent_dim"] == "2"]
    assert dict(line.fixed)["train.beta"] == "1"  # a value four configurations share
    ref, five = line.points
    assert ref.x == 1 and ref.contrast is None and sorted(ref.trial_ids) == ["0", "1"]
    assert five.trial_ids == ("2",)  # not configuration 9, which has no mean
    mean, se, low, high = _by_hand(d_low)
    assert five.contrast.mean == pytest.approx(mean) and five.contrast.se == pytest.approx(se)
    assert five.mean - ref.mean == pytest.approx(mean)
    # What the independent formula says (sqrt of the summed squared standard errors of the
    # two level means) is several times that: it counts the shared seed noise twice.
    e = {cid: float(np.std(v[cid], ddof=1) / 2) for cid in v}
    independent = math.sqrt(e[2] ** 2 + (math.sqrt(e[0] ** 2 + e[1] ** 2) / 2) ** 2)
    assert independent > 3 * five.contrast.se


def test_configuration_differences_pair_each_two_complete_configurations():
    configs = [_config(0, [5.0, 7.0, 6.0]), _config(1, [4.0, 5.5, 5.0])]
    configs.append(_config(2, [1.0, 1.0, 1.0], status=FAILED))  # never paired
    (row,) = paired.configuration_differences(configs, NLL)
    assert (row.a, row.b, row.knob) == ("0", "1", "configuration")
    mean, se, low, high = _by_hand([-1.0, -1.5, -1.0])
    assert (row.contrast.mean, row.contrast.se, row.contrast.n) == (
        pytest.approx(mean),
        pytest.approx(se),
        3,
    )
    assert row.contrast.low == pytest.approx(low, abs=2e-3)


# ---- Matching: a cell never spans more than MAX_BIN_FACTOR in a continuous key ----------


@pytest.mark.parametrize(
    "param",
    [
        BETA,
        Param("train.lr", "log_uniform", low=1e-4, high=1e-2),
        Param("train.beta", "log_uniform", low=1.0, high=1.5**3),  # exactly 3 bins
        Param("model.latent_dim", "int", low=2, high=64, log=True),
    ],
)
def test_log_bins_are_no_wider_than_the_stated_factor(param):
    edges = knob_matching.bin_edges(param)
    ratios = np.array(edges[1:]) / np.array(edges[:-1])
    assert ratios.max() <= knob_matching.MAX_BIN_FACTOR * (1 + 1e-9)
    assert edges[0] == pytest.approx(param.low) and edges[-1] == pytest.approx(param.high)
    # One bin fewer would be wider than the factor: the bins are as wide as allowed.
    n = len(edges) - 1
    assert n == 1 or (param.high / param.low) ** (1 / (n - 1)) > knob_matching.MAX_BIN_FACTOR


def test_the_beta_sweeps_bins_are_fifteen_of_1_49x():
    edges = knob_matching.bin_edges(BETA)
    assert len(edges) == 16 and edges[1] / edges[0] == pytest.approx(400 ** (1 / 15))
    words = knob_matching.matching_text(SEARCHED)
    assert "latent size and K by exact value" in words
    assert "beta in log-spaced bins of at most 1.5x (15 bins of 1.49x from 0.05 to 20)" in words
    assert "points_to_evaluate point) by exact value" in words
    lin = Param("train.lr", "uniform", low=0.0, high=1.0)
    assert knob_matching.bin_edges(lin) == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert "train.lr in 10 equal-width bins of 0.1 from 0 to 1" in knob_matching.matching_text(
        (K, lin)
    )


def test_a_matched_line_never_spans_more_than_the_factor_in_beta():
    rng = random.Random(4)
    configs = []
    for cid in range(300):
        beta = math.exp(rng.uniform(math.log(0.05), math.log(20.0)))
        latent, k = rng.choice((2, 8)), rng.choice((1, 5))
        configs.append(
            _config(cid, [rng.gauss(100, 3) for _ in range(3)], beta=beta, latent=latent, k=k)
        )
    # A value several configurations share (a points_to_evaluate point) is its own cell.
    configs += [_config(300 + i, [90.0, 91.0, 92.0], beta=1.0, k=k) for i, k in enumerate((1, 5))]
    by_id = {c.trial_id: c for c in configs}
    lines = 0
    for knob in ("train.k", "model.latent_dim"):
        for s in knobs.knob_series(configs, knob, NLL, SEARCHED):
            betas = [by_id[t].beta for pt in s.points for t in pt.trial_ids]
            assert max(betas) / min(betas) <= knob_matching.MAX_BIN_FACTOR, (knob, s.fixed, betas)
            lines += 1
    assert lines > 10
    series = knobs.knob_series(configs, "train.k", NLL, SEARCHED)
    (exact,) = [s for s in series if dict(s.fixed)["train.beta"] == "1"]
    assert [pt.trial_ids for pt in exact.points] == [("300",), ("301",)]
    # The old bins (edges 0.05, 0.224, 1, 4.47, 20) matched beta 0.3 with 0.9: no longer.
    two = [_config(0, [1.0, 2.0], beta=0.3, k=1), _config(1, [1.0, 2.0], beta=0.9, k=5)]
    assert knobs.knob_series(two, "train.k", NLL, SEARCHED) == []


def test_panels_say_how_they_matched_and_what_their_bars_are():
    configs = _table()
    panel = next(p for p in knobs.knob_panels(configs, SEARCHED, M.QUANTITY_NLL) if p.metric == NLL)
    assert panel.note.startswith(
        "lines matched on latent size by exact value; beta in log-spaced bins of at most 1.5x"
    )
    assert "minus the first point of its line, from per-seed paired differences (n = 4 seeds)" in (
        panel.note
    )
    # One seed per configuration: nothing to pair, and the panel says so.
    single = [
        _config(cid, c["values"][:1], latent=c["latent"], k=c["k"]) for cid, c in SEEDS.items()
    ]
    (one, _) = [
        p for p in knobs.knob_panels(single, SEARCHED, M.QUANTITY_NLL) if p.knob == "train.k"
    ]
    assert one.series and all(pt.contrast is None for s in one.series for pt in s.points)
    assert one.note.endswith(knobs.NO_PAIRS)
    assert knobs.knob_differences(single, SEARCHED, M.QUANTITY_NLL) == []
