"""``vae_study compare``: several study folders -> one page of their R-D planes, a headline
table, paired differences at shared configurations, ``tables.tex`` and ``tables.csv``.

Reads files only (no Ray, no torch), like ``report``. Studies are compared only when they
are evaluated alike (``comparable.evaluation``: the data, the test examples, eval.k and the
quantity the bound is); others are refused with one line, or with
``allow_different_evaluation`` drawn on panels of their own, the difference written on each.
A cross-entropy bound and an NLL are never on one pair of axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vae_study import marker
from vae_study.errors import ConfigError
from vae_study.files import atomic_write_text
from vae_study.records.folder import StudyFolder, load_folder
from vae_study.report import paper
from vae_study.report.comparable import (
    Study,
    check_comparable,
    evaluation_difference,
    panels,
)
from vae_study.report.comparison_figure import (
    STUDY_COLOURS,
    StudyStyle,
    study_planes,
)
from vae_study.report.comparison_html import index_html
from vae_study.report.comparison_tables import shared_differences, tex_tables
from vae_study.report.figure_style import MARKERS

COMPARISON = "comparison"  # the marker kind of a compare output folder
FIGURE = "rate_distortion.png"


def _labels(folders: Sequence[StudyFolder]) -> list[str]:
    """Each study's name; names met twice get their folder's path after them."""
    names = [sf.study.name for sf in folders]
    return [
        n if names.count(n) == 1 else f"{n} ({sf.folder})"
        for n, sf in zip(names, folders, strict=True)
    ]


def check_output_folder(out: Path, folders: Sequence[StudyFolder]) -> None:
    """Refuse an output folder that is a study folder or inside one, or a folder vae_study
    did not make as a comparison (``marker.check_owned``)."""
    inside = out.absolute().resolve()
    for sf in folders:
        root = sf.folder.resolve()
        if inside == root or root in inside.parents:
            raise ConfigError(
                f"--out {out} is the study folder {sf.folder} or inside it, whose files are "
                "the study's; give a new or empty folder"
            )
    marker.check_owned(
        out, COMPARISON, legacy=lambda _: False, fix="give a new or empty folder (--out DIR)"
    )


def compare(
    folders: Sequence[str | Path],
    out: str | Path,
    *,
    allow_different_evaluation: bool = False,
) -> Path:
    """Compare the studies in ``folders`` (two or more) into the folder ``out`` (new, empty,
    or a comparison vae_study made, which is rewritten): ``index.html``, the planes as
    ``rate_distortion.png`` / ``.pdf`` / ``.svg``, ``tables.tex`` and ``tables.csv``.
    Studies not evaluated alike are refused (``check_comparable``) before a file is
    written. Returns ``out``."""
    if len(folders) < 2:
        raise ConfigError(f"compare needs two or more study folders, got {len(folders)}")
    read = [load_folder(f) for f in folders]
    seen: dict[Path, Path] = {}
    for given, sf in zip(folders, read, strict=True):
        if sf.folder.resolve() in seen:
            raise ConfigError(
                f"study folder {given} is given twice (also as {seen[sf.folder.resolve()]}); "
                "give each study once"
            )
        seen[sf.folder.resolve()] = Path(given)
    studies = [
        Study(
            label,
            sf,
            StudyStyle(
                label,
                STUDY_COLOURS[i % len(STUDY_COLOURS)],
                MARKERS[i % len(MARKERS)],
                tuple(p.key for p in sf.study.search.space),
            ),
        )
        for i, (label, sf) in enumerate(zip(_labels(read), read, strict=True))
    ]
    check_comparable(studies, allow_different_evaluation=allow_different_evaluation)
    out = Path(out)
    check_output_folder(out, read)
    marker.write(out, COMPARISON)

    groups = panels(studies)
    titles = [_panel_title(ev, group, groups) for ev, group in groups]
    figure = study_planes(
        [
            (title, [(s.style, s.folder.configs, s.folder.confirmed) for s in group])
            for title, (_, group) in zip(titles, groups, strict=True)
        ],
        out / FIGURE,
    )
    diffs = shared_differences(studies)
    rows = [r for s in studies for r in paper.csv_rows(s.label, s.folder)]
    paper.write_csv(out / paper.CSV_FILE, rows)
    paper.write_tex(out / paper.TEX_FILE, tex_tables(studies, diffs))
    atomic_write_text(out / "index.html", index_html(studies, groups, titles, figure, diffs))
    return out


def _panel_title(
    ev: dict[str, str], group: Sequence[Study], groups: Sequence[tuple[dict[str, str], Any]]
) -> str:
    title = f"Test R-D plane: {', '.join(s.label for s in group)}"
    if len(groups) == 1:
        return title
    others = [e for e, _ in groups if e != ev]
    diff = "; ".join(evaluation_difference(ev, o) for o in others)
    return f"{title} (evaluated differently from the other panels: {diff})"
