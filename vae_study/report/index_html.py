"""A report's ``index.html``: the page a browser opens, one self-contained file with the
study's tables, warnings, figures (each with links to its PDF and SVG) and notes."""

from __future__ import annotations

import html
from pathlib import Path

from vae_study.records.folder import StudyFolder
from vae_study.records.layout import RESULTS_FILE
from vae_study.records.trial import Trial
from vae_study.report import paper
from vae_study.report.differences import differences_sections
from vae_study.report.figure_files import VECTOR_SUFFIXES
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


def index_html(
    sf: StudyFolder,
    best: Trial | None,
    front: list[Trial],
    figures: list[tuple[str, str]],
    notes: list[str],
    seconds: float,
) -> str:
    """The report's ``index.html``: the study's state and protocol, its warnings, the
    confirmation, the selected trial, the fronts, the differences tables, ``figures`` (file
    name, caption), every trial and ``notes``; ``seconds`` the build took."""
    esc = html.escape

    def grid(head: list[str], lines: list[list[str]]) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>" for line in lines
        )
        return (
            "<table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr>"
            + rows
            + "</table>"
        )

    def table(trials: list[Trial]) -> str:
        return grid(table_head(sf), [trial_row(sf, t) for t in trials])

    body = [
        f"<h1>Study {esc(sf.study.name)}</h1>",
        f"<p>{esc(count_words(sf))}; nats per example "
        "(bits/dim where a column says so). Files: "
        f'<a href="{RESULTS_FILE}">{RESULTS_FILE}</a>, '
        '<a href="summary.md">summary.md</a>, '
        f'<a href="{paper.TEX_FILE}">{paper.TEX_FILE}</a>, '
        f'<a href="{paper.CSV_FILE}">{paper.CSV_FILE}</a>.</p>',
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in protocol_lines(sf)) + "</ul>",
    ]
    for warning in (selection_warning(sf), optimism_warning(sf)):
        if warning:
            body.append(f'<p class="warn">{esc(warning)}</p>')
    if sf.confirmed:
        body += [f"<h2>{esc(confirmation_words(sf))}</h2>", grid(*confirmation_table(sf))]
    if best is not None:
        body += [
            f"<h2>Selected {unit(sf)}: {esc(selection_words(sf))}</h2>",
            table([best]),
        ]
    chosen = study_front(sf)
    if chosen:
        body += [f"<h2>{esc(front_words(sf))}</h2>", table(chosen)]
    if front:
        body += [f"<h2>{esc(RD_FRONT_WORDS)}</h2>", table(front)]
    for heading, words, d_head, d_rows in differences_sections(sf):
        body += [f"<h2>{esc(heading)}</h2>", f"<p>{esc(words)}</p>"]
        if d_rows:
            body.append(grid(d_head, d_rows))
    for name, caption in figures:
        stem = Path(name).stem
        vector = ", ".join(
            f'<a href="{esc(stem + s)}">{esc(stem + s)}</a>' for s in VECTOR_SUFFIXES
        )
        body.append(
            f'<figure><img src="{esc(name)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)} Vector: {vector}.</figcaption></figure>"
        )
    body += [f"<h2>All {unit(sf)}s</h2>", table(sf.configs)]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    body.append(f'<p class="small">Report built in {seconds:.1f} s by vae_study.</p>')
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%}figure{margin:2em 0}figcaption{color:#444}"
        ".warn{color:#a00;font-weight:bold;border:2px solid #a00;padding:.5em}"
        ".small{color:#777;font-size:12px}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>vae_study report: {esc(sf.study.name)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
