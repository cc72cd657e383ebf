"""A report's ``summary.md``: the study's state, what its numbers are, the warnings, the
selected trial, the fronts, the differences tables, failed trials and notes, in Markdown
whose cells a study's strings cannot break."""

from __future__ import annotations

import html
import math
import re
from typing import Any

from vae_study.records import results as R
from vae_study.records.folder import StudyFolder
from vae_study.records.layout import FAILED
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY
from vae_study.records.trial import Trial
from vae_study.report.differences import differences_sections
from vae_study.report.headline import (
    RD_FRONT_WORDS,
    front_words,
    optimism_warning,
    protocol_lines,
    selection_warning,
    selection_words,
    study_front,
)
from vae_study.report.trial_tables import (
    confirmation_table,
    confirmation_words,
    count_words,
    table_head,
    trial_row,
    unit,
)

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def _md(value: Any) -> str:
    """Text for markdown (a table cell, a list item): markup characters taken literally,
    HTML escaped, newlines as ``<br>``, so a study's strings cannot break the layout."""
    text = html.escape(_MD_SPECIAL.sub(r"\\\1", str(value)), quote=False)
    return "<br>".join(text.splitlines())


def _code(value: Any) -> str:
    """A markdown code span holding ``value`` literally (fenced past its own backticks)."""
    text = " ".join(str(value).splitlines())
    fence = "`" * (1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table_md(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md, r)) + " |" for r in rows]
    return "\n".join(lines)


def summary_md(
    sf: StudyFolder, best: Trial | None, front: list[Trial], notes: list[str], seconds: float
) -> str:
    """The report's ``summary.md``: the study's state and protocol, its warnings, the
    confirmation, the selected trial ``best``, the fronts (``front``: the test R-D front), the
    differences tables, failed trials and ``notes``; ``seconds`` the build took."""
    keys = [p.key for p in sf.study.search.space]
    head = table_head(sf)
    counts: dict[str, int] = {}
    for t in sf.configs:
        counts[t.status] = counts.get(t.status, 0) + 1
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in sf.study.search.objectives)
    warning = selection_warning(sf)
    parts = [
        f"# Study {sf.study.name}",
        "",
        f"- folder: {_code(sf.folder)}",
        f"- {count_words(sf)} ("
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")
        + ")",
        f"- searched: {', '.join(keys)}; objectives: {objectives}; "
        f"algorithm {sf.study.search.algorithm}",
        *[f"- {line}" for line in protocol_lines(sf)],
        "- numbers are nats per example (bits/dim where a column says so)",
        "",
    ]
    if warning:
        parts += [f"> **{warning}**", ""]
    optimism = optimism_warning(sf)
    if optimism:
        parts += [f"> **{optimism}**", ""]
    if sf.confirmed:
        c_head, c_rows = confirmation_table(sf)
        parts += [f"## {confirmation_words(sf)}", "", _table_md(c_rows, c_head), ""]
    if best is not None:
        parts += [
            f"## Selected {unit(sf)}: {selection_words(sf)}",
            "",
            _table_md([trial_row(sf, best)], head),
            "",
        ]
    chosen = study_front(sf)
    if chosen:
        parts += [
            f"## {front_words(sf)}",
            "",
            _table_md([trial_row(sf, t) for t in chosen], head),
            "",
        ]
    if front:
        parts += [
            f"## {RD_FRONT_WORDS}",
            "",
            _table_md([trial_row(sf, t) for t in front], head),
            "",
        ]
    for heading, words, d_head, d_rows in differences_sections(sf):
        parts += [f"## {heading}", "", _md(words), ""]
        if d_rows:
            parts += [_table_md(d_rows, d_head), ""]
    bad = [(t, "") for t in sf.trials if t.status == FAILED]
    bad += [(t, ", confirmation") for t in sf.confirm_trials if t.status == FAILED]
    if bad:
        parts += ["## Failed trials (diverged or crashed)", ""]
        parts += [
            f"- {_md(t.trial_id)} ({_md(t.status)}{_md(_member_words(t) + where)}): "
            f"{_md(t.metrics.get(R.ERROR_KEY) or 'no message')}"
            for t, where in bad
        ]
        parts.append("")
    if notes:
        parts += ["## Notes", ""] + [f"- {_md(n)}" for n in notes] + [""]
    parts.append(f"Report built in {seconds:.1f} s.")
    return "\n".join(parts) + "\n"


def _member_words(t: Trial) -> str:
    """``, configuration 3, replicate 1`` for a member row of a replicated table, else ''."""
    cid, rep = t.value(CONFIG_KEY), t.value(REPLICATE_KEY)
    if not (math.isfinite(cid) and math.isfinite(rep)):
        return ""
    return f", configuration {int(cid)}, replicate {int(rep)}"
