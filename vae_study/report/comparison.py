"""``vae_study compare``: several study folders -> one page of their R-D planes, a headline
table, paired differences at shared configurations, ``tables.tex`` and ``tables.csv``.

Reads files only (no Ray, no torch), like ``report``. Studies are compared only when they
are evaluated alike (``evaluation``: the data, the test examples, eval.k and the quantity
the bound is); others are refused with one line, or with ``allow_different_evaluation``
drawn on panels of their own, the difference written on each. A cross-entropy bound and an
NLL are never on one pair of axes.
"""

from __future__ import annotations

import html
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study import marker
from vae_study import metrics as M
from vae_study.errors import ConfigError
from vae_study.files import atomic_write_text
from vae_study.records.folder import StudyFolder, Trial, load_folder
from vae_study.report import paper, plots
from vae_study.report.page import best_trial, optimism_warning, selection_words
from vae_study.report.paired import Contrast, paired_contrast

COMPARISON = "comparison"  # the marker kind of a compare output folder
FIGURE = "rate_distortion.png"
ALLOW_FLAG = "--allow-different-evaluation"
MARKER_NAMES = {"o": "circles", "s": "squares", "^": "triangles", "D": "diamonds"}
# The test metrics of the paired-differences table: the bound (its key by quantity), R, D.
DIFFERENCE_TERMS = (M.TEST_RATE, M.TEST_DISTORTION)


@dataclass(frozen=True)
class Study:
    """One compared study: its unique label, the folder read, and how it is drawn."""

    label: str
    folder: StudyFolder
    style: plots.StudyStyle

    @property
    def bound(self) -> str:
        return M.bound_key("test", self.folder.study.base.quantity)


def evaluation(sf: StudyFolder) -> dict[str, str]:
    """What a study's test numbers depend on beyond its models: the dataset (and its file,
    for a researcher's own data), the binarization, the test examples and eval.k of the
    bound, and the quantity the bound is (NLL or cross-entropy). Two studies whose
    evaluations differ report numbers that are not comparable."""
    base = sf.study.base
    d = base.data
    out = {"data.dataset": d.dataset, "data.binarize": d.binarize}
    for key in ("path", "train_dir", "val_dir", "test_dir", "image_size", "channels"):
        value = getattr(d, key)
        if value is not None:
            out[f"data.{key}"] = str(value)
    ev = base.eval
    out["eval.k"] = str(ev.k)
    out["eval.nll_examples"] = "all" if ev.nll_examples is None else str(ev.nll_examples)
    out["quantity"] = paper.quantity_name(base.quantity)
    return out


def evaluation_difference(a: dict[str, str], b: dict[str, str]) -> str:
    """``"eval.k 1000 vs 5000, quantity test NLL vs test cross-entropy bound"``."""
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return ", ".join(f"{k} {a.get(k, 'unset')} vs {b.get(k, 'unset')}" for k in keys)


def check_comparable(studies: Sequence[Study], *, allow_different_evaluation: bool) -> None:
    """Refuse studies evaluated differently: one line naming the first two that differ and
    how; none with ``allow_different_evaluation``."""
    if allow_different_evaluation:
        return
    first = studies[0]
    for other in studies[1:]:
        diff = evaluation_difference(evaluation(first.folder), evaluation(other.folder))
        if diff:
            raise ConfigError(
                f"studies {first.label} and {other.label} are not evaluated alike ({diff}): "
                f"their numbers are not comparable; pass {ALLOW_FLAG} to draw them on "
                "separate panels"
            )


def panels(studies: Sequence[Study]) -> list[tuple[dict[str, str], list[Study]]]:
    """The studies grouped by evaluation, in the order first met: one panel each."""
    out: list[tuple[dict[str, str], list[Study]]] = []
    for s in studies:
        ev = evaluation(s.folder)
        for known, group in out:
            if known == ev:
                group.append(s)
                break
        else:
            out.append((ev, [s]))
    return out


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
            plots.StudyStyle(
                label,
                plots.STUDY_COLOURS[i % len(plots.STUDY_COLOURS)],
                plots.MARKERS[i % len(plots.MARKERS)],
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
    figure = plots.study_planes(
        [
            (title, [(s.style, s.folder.configs, s.folder.confirmed) for s in group])
            for title, (_, group) in zip(titles, groups, strict=True)
        ],
        out / FIGURE,
    )
    diffs = shared_differences(studies)
    rows = [r for s in studies for r in paper.csv_rows(s.label, s.folder)]
    paper.write_csv(out / paper.CSV_FILE, rows)
    paper.write_tex(out / paper.TEX_FILE, _tex_tables(studies, diffs))
    atomic_write_text(out / "index.html", _html(studies, groups, titles, figure, diffs))
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


def _tex_tables(studies: Sequence[Study], diffs: Sequence[SharedDifference]) -> list[paper.Table]:
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


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of the PNG at ``path``, from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def _html(
    studies: Sequence[Study],
    groups: Sequence[tuple[dict[str, str], list[Study]]],
    titles: Sequence[str],
    figure: Path | None,
    diffs: Sequence[SharedDifference],
) -> str:
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)
