"""The rows of a report's tables: every trial (or configuration: a row of one or more seeds)
with its searched values and its numbers, validation then test, as ``mean ± se`` where it
has several seeds; the confirmation's headline table; and what a row is called."""

from __future__ import annotations

import math
from typing import Any

from vae_study import metrics as M
from vae_study.records import results as R
from vae_study.records.folder import StudyFolder
from vae_study.records.layout import FAILED
from vae_study.records.trial import Trial


def fmt(v: Any) -> str:
    """A table cell: a float to 4 significant digits (nan: empty), anything else as text."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _mean_se(t: Trial, metric: str) -> str:
    """``mean ± se`` where the configuration has a standard error, else the number alone."""
    e = t.error(metric)
    v = t.value(metric)
    return fmt(v) if e is None or math.isnan(v) else f"{v:.5g} ± {e:.3g}"


def replicated(sf: StudyFolder) -> bool:
    """Whether the study trains several seeds per configuration (its tables have a seeds
    column and mean ± se cells, its rows are configurations)."""
    return any(c.n_replicates > 1 for c in (*sf.configs, *sf.confirmed))


def replicated_search(sf: StudyFolder) -> bool:
    """Whether the search trains several seeds per configuration (paired by seed)."""
    return any(c.n_replicates > 1 for c in sf.configs)


def by_config(sf: StudyFolder) -> bool:
    """Whether the table's rows are configurations named by their config_id (a study
    written with replicates and packs), not trials named by Ray's trial id."""
    return replicated(sf) or any(
        c.members and c.trial_id != c.members[0].trial_id for c in sf.configs
    )


def unit(sf: StudyFolder) -> str:
    """What a table row is: a trial, or a configuration (of one or more seeds)."""
    return "configuration" if by_config(sf) else "trial"


def count_words(sf: StudyFolder) -> str:
    """How far the study is: configurations (trials) of search.num_trials, members."""
    words = f"{unit(sf)}s: {len(sf.configs)} of {sf.study.search.num_trials}"
    if replicated(sf):
        words += f", {len(sf.trials)} runs (seeds) in results.csv"
    return words


def _columns(sf: StudyFolder) -> list[tuple[str, str]]:
    """(heading, metric) of the numbers in every trial table: validation, then test."""
    quantity, dequantized = sf.study.base.quantity, sf.study.base.dequantized
    name = "NLL" if quantity == M.QUANTITY_NLL else "CE bound"
    cols = [(f"val {name}", M.bound_key("val", quantity))]
    cols += [("val bits/dim", M.VAL_BPD)] if dequantized else []
    cols += [
        ("val -ELBO", M.VAL_NEG_ELBO),
        ("val rate", M.VAL_RATE),
        ("val distortion", M.VAL_DISTORTION),
        ("test rate", M.TEST_RATE),
        ("test distortion", M.TEST_DISTORTION),
        ("test -ELBO", M.TEST_NEG_ELBO),
        (f"test {name}", M.bound_key("test", quantity)),
    ]
    cols += [("test bits/dim", M.TEST_BPD)] if dequantized else []
    return cols + [
        ("test gap -ELBO - bound", M.TEST_BOUND_GAP),
        ("test active units", M.TEST_ACTIVE_UNITS),
    ]


def table_head(sf: StudyFolder) -> list[str]:
    """The heading of a trial table: the row's name, status, seeds (replicated studies),
    searched keys, then the numbers (``_columns``)."""
    keys = [p.key for p in sf.study.search.space]
    seeds = ["seeds"] if replicated(sf) else []
    return [unit(sf), "status", *seeds, *keys, *[h for h, _ in _columns(sf)]]


def trial_row(sf: StudyFolder, t: Trial) -> list[str]:
    """One trial's (configuration's) row of a trial table, under ``table_head``."""
    seeds = [f"{t.n_seeds} of {t.n_replicates}"] if replicated(sf) else []
    return [
        t.trial_id,
        t.status,
        *seeds,
        *[fmt(t.params.get(p.key, "")) for p in sf.study.search.space],
        *[_mean_se(t, m) for _, m in _columns(sf)],
    ]


def confirmation_words(sf: StudyFolder) -> str:
    """The headline of a study with a confirmation stage (see ``selection.how_confirmed``)."""
    from vae_study.records.selection import how_confirmed as words

    return f"Confirmed configurations: test mean ± standard error; {words(sf.study)}"


def confirmation_table(sf: StudyFolder) -> tuple[list[str], list[list[str]]]:
    """(head, rows) of the headline table: each confirmed configuration with the means of
    the search that selected it (its objectives, over the search's seeds), then its
    confirmation numbers as mean ± se over the fresh seeds, with how many finished."""
    from vae_study.records.selection import search_replicates

    objectives = [o.metric for o in sf.study.search.objectives]
    searched = {c.trial_id: c for c in sf.configs}
    n_search = search_replicates(sf.study)
    head = [
        "configuration",
        "status",
        "seeds",
        *[p.key for p in sf.study.search.space],
        *[f"search {m} (mean of {n_search})" for m in objectives],
        *[h for h, _ in _columns(sf)],
    ]
    rows = []

    def order(c: Trial) -> tuple[bool, int]:  # a failed one last: out of the ranking
        return (c.status == FAILED, int(c.trial_id) if c.trial_id.isdigit() else 0)

    for c in sorted(sf.confirmed, key=order):
        found = searched.get(c.trial_id)
        rows.append(
            [
                c.trial_id,
                _status_words(c),
                f"{c.n_seeds} of {c.n_replicates}",
                *[fmt(c.params.get(p.key, "")) for p in sf.study.search.space],
                *[fmt(found.value(m)) if found else "" for m in objectives],
                *[_mean_se(c, m) for _, m in _columns(sf)],
            ]
        )
    return head, rows


def _status_words(c: Trial) -> str:
    """A configuration's status; a failed one's with its first member's error (a seed that
    diverged): it has no mean, and the reader sees why."""
    if c.status != FAILED:
        return c.status
    errors = [
        str(m.metrics[R.ERROR_KEY])
        for m in c.members
        if m.status == FAILED and isinstance(m.metrics.get(R.ERROR_KEY), str)
    ]
    return f"{c.status}: {errors[0]}" if errors else c.status
