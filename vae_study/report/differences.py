"""The differences tables of a report: metric(b) − metric(a) from per-seed paired
differences, between levels of each discrete knob of the search (where it has replicates)
and between the confirmed configurations (where the confirmation has run)."""

from __future__ import annotations

from vae_study import metrics as M
from vae_study.records.folder import StudyFolder
from vae_study.report.knob_matching import bin_edges, knob_name, matching_text
from vae_study.report.knobs import knob_differences, varied_knobs
from vae_study.report.paired import Difference, configuration_differences
from vae_study.report.trial_tables import replicated_search

_HOW_PAIRED = (
    "mean ± s.e. = mean(d) ± std(d, ddof 1) / sqrt(n) over the n per-seed differences d; "
    "the 95% interval is mean ± t(0.975, n - 1) × s.e. (Student's t); a configuration "
    "without all its seeds is left out."
)


def _difference_cells(d: Difference, *, cells: bool) -> list[str]:
    c = d.contrast
    return [
        *([str(c.cells)] if cells else []),
        f"{c.mean:.4g} ± {c.se:.3g}",
        f"{c.low:.4g} to {c.high:.4g}",
        str(c.n),
    ]


def differences_sections(sf: StudyFolder) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(heading, how its numbers were made, head, rows) of each differences table: the
    search's (``knobs.knob_differences``: pairs of levels of each discrete knob, paired by
    seed at matched settings) where the search has replicates, and the confirmation's
    (``paired.configuration_differences``: pairs of confirmed configurations, on the test
    counterparts of the objectives and the test bound) where it has run. Rows: b - a."""
    out = []
    tail = ["mean difference ± s.e.", "95% interval (t)", "n (seeds)"]
    if replicated_search(sf):
        searched = sf.study.search.space
        rows = [
            [
                f"{knob_name(d.knob)} {d.b} − {knob_name(d.knob)} {d.a}",
                d.metric,
                *_difference_cells(d, cells=True),
            ]
            for d in knob_differences(sf.configs, searched, sf.study.base.quantity)
        ]
        continuous = [knob_name(p.key) for p in varied_knobs(searched) if bin_edges(p)]
        discrete = [knob_name(p.key) for p in varied_knobs(searched) if not bin_edges(p)]
        matched = matching_text(searched) or "one key searched: all configurations in one cell"
        words = (
            "Each row is metric(b) − metric(a) for two levels of a knob, from per-seed paired "
            "differences: seed s at level b minus seed s at level a in the same matched cell "
            f"(the other searched keys matched as in the knob plots: {matched}); a level of "
            "several configurations in a cell is their per-seed mean; where several cells hold "
            "both levels, each seed's differences are averaged over them (equal weight; "
            "'cells' says how many), so n counts seeds, not seeds × cells. " + _HOW_PAIRED
        )
        if continuous:
            words += (
                f" {', '.join(continuous)}: continuous, its paired differences are the knob "
                "plot's bars, not level pairs here."
            )
        if not rows:
            words += (
                f" No two levels of {', '.join(discrete)} pair two seeds in a matched cell."
                if discrete
                else " No knob with discrete levels is searched: no rows."
            )
        out.append(
            (
                "Differences between knob levels, paired by seed",
                words,
                ["difference (b − a)", "metric", "cells", *tail],
                rows,
            )
        )
    if sf.confirmed:
        metrics = _confirm_metrics(sf)
        confirmed = sorted(sf.confirmed, key=lambda c: _id_order(c.trial_id))
        rows = [
            [
                f"configuration {d.b} − configuration {d.a}",
                d.metric,
                *_difference_cells(d, cells=False),
            ]
            for m in metrics
            for d in configuration_differences(confirmed, m)
        ]
        words = (
            "Each row is metric(b) − metric(a) for two confirmed configurations, from their "
            "per-seed differences over the confirmation's fresh seeds (the same seed in every "
            "configuration). " + _HOW_PAIRED
        )
        if not rows:
            words += " Fewer than two confirmed configurations have all their seeds: no rows."
        out.append(
            (
                "Differences between confirmed configurations, paired by seed",
                words,
                ["difference (b − a)", "metric", *tail],
                rows,
            )
        )
    return out


def _confirm_metrics(sf: StudyFolder) -> list[str]:
    """The test bound, then the test counterpart of each (validation) objective."""
    out = [M.bound_key("test", sf.study.base.quantity)]
    for o in sf.study.search.objectives:
        test = "test/" + o.metric.split("/", 1)[-1]
        metric = test if test in M.TEST_SCALARS else o.metric
        if metric not in out:
            out.append(metric)
    return out


def _id_order(trial_id: str) -> tuple[int, int | str]:
    return (0, int(trial_id)) if trial_id.isdigit() else (1, trial_id)
