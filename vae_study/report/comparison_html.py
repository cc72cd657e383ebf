"""A comparison's ``index.html``: the studies with their colours and evaluations, the
warnings, the headline table, the R-D planes, the paired differences and each study's
configurations."""

from __future__ import annotations

import html
import struct
from collections.abc import Sequence
from pathlib import Path

from vae_study.report import paper
from vae_study.report.comparable import ALLOW_FLAG, Study, evaluation
from vae_study.report.comparison_tables import (
    DIFFERENCES_WORDS,
    SharedDifference,
    differences_table,
    headline_table,
)
from vae_study.report.headline import optimism_warning

MARKER_NAMES = {"o": "circles", "s": "squares", "^": "triangles", "D": "diamonds"}  # in words


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of the PNG at ``path``, from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def index_html(
    studies: Sequence[Study],
    groups: Sequence[tuple[dict[str, str], list[Study]]],
    titles: Sequence[str],
    figure: Path | None,
    diffs: Sequence[SharedDifference],
) -> str:
    """The comparison's ``index.html``: ``studies`` (their evaluation groups ``groups``, one
    panel title each in ``titles``), the planes' PNG ``figure`` (None: no finished
    configuration) and the paired differences ``diffs``."""
    esc = html.escape

    def grid(head: list[str], rows: list[list[str]]) -> str:
        return (
            "<table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>"
        )

    items = []
    for s in studies:
        ev = ", ".join(f"{k} {v}" for k, v in evaluation(s.folder).items())
        shape = MARKER_NAMES.get(s.style.marker, f"marker {s.style.marker}")
        items.append(
            f'<li><span class="study" data-colour="{s.style.colour}" '
            f'style="color:{s.style.colour};font-weight:bold">&#9632; {esc(s.label)}</span> '
            f"({shape}): {esc(str(s.folder.folder))}; {len(s.folder.configs)} configurations, "
            f"{len(s.folder.confirmed)} confirmed; evaluation: {esc(ev)}</li>"
        )
    body = [
        f"<h1>Comparison of {len(studies)} studies</h1>",
        "<p>Test numbers in nats per example, mean ± standard error over seeds. Files: "
        f'<a href="{paper.TEX_FILE}">{paper.TEX_FILE}</a>, '
        f'<a href="{paper.CSV_FILE}">{paper.CSV_FILE}</a>.</p>',
        "<ul>" + "".join(items) + "</ul>",
    ]
    if len(groups) > 1:
        body.append(
            f'<p class="warn">These studies are not evaluated alike ({esc(ALLOW_FLAG)}): '
            "each evaluation has its own panel, with its difference written on it; numbers "
            "on different panels are not comparable.</p>"
        )
    for s in studies:
        warning = optimism_warning(s.folder)
        if warning:
            body.append(f'<p class="warn">{esc(s.label)}: {esc(warning)}</p>')
    body += [
        "<h2>Headline: each study's selected configuration</h2>",
        grid(*headline_table(studies)),
    ]
    if figure is not None:
        w, h = png_size(figure)
        stem = figure.stem
        caption = (
            "; ".join(titles) + ". Each study in its colour and marker: its finished "
            "configurations (labelled with their searched values) at their mean test (rate, "
            "distortion) with ± s.e. bars, the "
            "staircase of its Pareto front of those means, its confirmed configurations as "
            f'large hollow markers. Vector: <a href="{stem}.pdf">{stem}.pdf</a>, '
            f'<a href="{stem}.svg">{stem}.svg</a>.'
        )
        body.append(
            f'<figure><img src="{esc(figure.name)}" width="{w}" height="{h}" '
            f'alt="R-D planes of the studies"><figcaption>{caption}</figcaption></figure>'
        )
    else:
        body.append("<p>No study has a finished configuration: no R-D plane.</p>")
    body.append("<h2>Paired differences at shared configurations</h2>")
    body.append(f"<p>{esc(DIFFERENCES_WORDS)}</p>")
    if diffs:
        body.append(grid(*differences_table(diffs)))
    else:
        body.append(
            "<p>No two studies evaluated alike share a configuration with two completed "
            "seeds in common: no rows.</p>"
        )
    for i, s in enumerate(studies):
        t = paper.configurations_table(s.label, s.folder, label=f"study-{i + 1}")
        body += [f"<h2>Study {esc(s.label)}: configurations</h2>", grid(t.head, t.rows)]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%;height:auto}figure{margin:2em 0}figcaption{color:#444}"
        ".warn{color:#a00;font-weight:bold;border:2px solid #a00;padding:.5em}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>vae_study comparison: {esc(', '.join(s.label for s in studies))}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
