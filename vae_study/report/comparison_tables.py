"""The tables of a comparison: each study's headline (its selected configuration's test
numbers), the paired differences at configurations two studies share, and the tables of
``tables.tex``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vae_study import metrics as M
from vae_study.records.folder import StudyFolder
from vae_study.records.trial import Trial
from vae_study.report import paper
from vae_study.report.comparable import Study, evaluation
from vae_study.report.headline import best_trial, selection_words
from vae_study.report.paired import Contrast, paired_contrast

# The test metrics of the paired-differences table: the bound (its key by quantity), R, D.
DIFFERENCE_TERMS = (M.TEST_RATE, M.TEST_DISTORTION)


def headline(s: Study) -> tuple[Trial | None, str]:
    """The study's selected configuration and how it was chosen: with a confirmation, the
    completed confirmed configuration ranked best by the search (its test numbers are the
    fresh seeds'); else the search's ``best_trial`` (optimistic: its own seeds)."""
    sf = s.folder
    done = {c.trial_id: c for c in sf.confirmed if c.finished}
    if done:
        obj = sf.study.search.objectives[0]
        sign = 1 if obj.mode == "min" else -1
        ranked = sorted(
            (c for c in sf.configs if c.trial_id in done and math.isfinite(c.value(obj.metric))),
            key=lambda c: sign * c.value(obj.metric),
        )
        if ranked:
            return (
                done[ranked[0].trial_id],
                f"confirmed: best of the search on {obj.metric}, test numbers over "
                f"{done[ranked[0].trial_id].n_seeds} fresh seeds",
            )
    best = best_trial(sf)
    if best is None:
        return None, "no finished configuration"
    return best, selection_words(sf) + "; not confirmed: its test numbers are optimistic"


def headline_table(studies: Sequence[Study]) -> tuple[list[str], list[list[str]]]:
    """(head, rows): one row per study, its selected configuration's test numbers."""
    head = [
        "study",
        "configuration",
        "selected",
        "quantity",
        "bound",
        "bits/dim",
        "rate",
        "distortion",
        "-ELBO",
        "n (seeds)",
    ]
    rows = []
    for s in studies:
        c, how = headline(s)
        sf = s.folder
        what = (
            f"{paper.quantity_name(sf.study.base.quantity)} -L_{sf.study.base.eval.k} "
            f"({paper.UNIT})"
        )
        if c is None:
            rows.append([s.label, "", how, what, "", "", "", "", "", "0"])
            continue
        searched = ", ".join(
            f"{p.key}={_fmt(c.params.get(p.key, ''))}" for p in sf.study.search.space
        )
        rows.append(
            [
                s.label,
                f"{c.trial_id} ({searched})" if searched else c.trial_id,
                how,
                what,
                paper.mean_se(c, s.bound),
                paper.mean_se(c, M.TEST_BPD) if sf.study.base.dequantized else "",
                paper.mean_se(c, M.TEST_RATE),
                paper.mean_se(c, M.TEST_DISTORTION),
                paper.mean_se(c, M.TEST_NEG_ELBO),
                str(c.n_seeds),
            ]
        )
    return head, rows


def _setting(sf: StudyFolder, c: Trial, key: str) -> str:
    """The value of run key ``key`` (``section.name``) in configuration ``c``: its params,
    else the study's base configuration."""
    if key in c.params:
        return _fmt(c.params[key])
    section, _, name = key.partition(".")
    return _fmt(sf.study.base.to_dict().get(section, {}).get(name))


@dataclass(frozen=True)
class SharedDifference:
    """b minus a at one configuration both studies searched, paired by seed."""

    a: str  # study labels
    b: str
    setting: str  # e.g. "train.k=5"
    metric: str
    contrast: Contrast


def shared_differences(studies: Sequence[Study]) -> list[SharedDifference]:
    """For every pair of studies evaluated alike (b after a, in the given order), at every
    configuration both have (equal values of every key either searched), the contrast of
    the test bound, rate and distortion over their shared seeds (``paired.paired_contrast``;
    completed configurations only; fewer than two shared seeds: no row)."""
    out = []
    for i, a in enumerate(studies):
        for b in studies[i + 1 :]:
            if evaluation(a.folder) != evaluation(b.folder):
                continue
            keys = list(dict.fromkeys(p.key for s in (a, b) for p in s.folder.study.search.space))
            at_b = {
                tuple(_setting(b.folder, c, k) for k in keys): c
                for c in b.folder.configs
                if c.finished
            }
            for ca in a.folder.configs:
                values = tuple(_setting(a.folder, ca, k) for k in keys)
                cb = at_b.get(values)
                if not ca.finished or cb is None:
                    continue
                setting = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
                for metric in (a.bound, *DIFFERENCE_TERMS):
                    c = paired_contrast([([ca], [cb])], metric)
                    if c is not None:
                        out.append(SharedDifference(a.label, b.label, setting, metric, c))
    return out


def differences_table(diffs: Sequence[SharedDifference]) -> tuple[list[str], list[list[str]]]:
    """(head, rows) of the paired differences at shared configurations."""
    head = [
        "difference (b − a)",
        "at",
        "metric",
        "mean difference ± s.e.",
        "95% interval (t)",
        "n (seeds)",
    ]
    rows = [
        [
            f"{d.b} − {d.a}",
            d.setting,
            d.metric,
            f"{d.contrast.mean:.4g} ± {d.contrast.se:.3g}",
            f"{d.contrast.low:.4g} to {d.contrast.high:.4g}",
            str(d.contrast.n),
        ]
        for d in diffs
    ]
    return head, rows


DIFFERENCES_WORDS = (
    "At each configuration two studies both searched (equal values of every searched key), "
    "metric(b) − metric(a) from per-seed differences: seed s of study b minus seed s of "
    "study a (replicate r trains with train.seed + r in both). mean ± s.e. = mean(d) ± "
    "std(d, ddof 1) / sqrt(n) over the n shared seeds; the 95% interval is mean ± "
    "t(0.975, n − 1) × s.e.; a configuration without all its seeds is left out."
)


def tex_tables(studies: Sequence[Study], diffs: Sequence[SharedDifference]) -> list[paper.Table]:
    """The tables of a comparison's ``tables.tex``: the headline, the paired differences
    (where there are any) and each study's configurations."""
    head, rows = headline_table(studies)
    tables = [
        paper.Table(
            "Each study's selected configuration: test numbers as mean $\\pm$ standard error "
            "over n seeds; the bound's quantity is in its row (" + paper.UNIT + "; a "
            "cross-entropy bound is not a likelihood); rate, distortion and $-$ELBO in "
            + paper.UNIT
            + ".",
            "tab:compare-headline",
            head,
            rows,
        )
    ]
    if diffs:
        d_head, d_rows = differences_table(diffs)
        tables.append(
            paper.Table(
                paper.tex_escape(DIFFERENCES_WORDS) + " All in " + paper.UNIT + ".",
                "tab:compare-differences",
                d_head,
                d_rows,
            )
        )
    for i, s in enumerate(studies):
        tables.append(paper.configurations_table(s.label, s.folder, label=f"tab:study-{i + 1}"))
    return tables


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)
