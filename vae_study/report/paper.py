"""Paper-ready tables of a study (``report``) or of several (``compare``): ``tables.tex``
(LaTeX with booktabs, one ``table`` float each, the quantity and its unit in the caption)
and ``tables.csv`` (tidy: one row per configuration, its mean, s.e. and n as columns).

Reads ``Trial`` objects only (no Ray, no torch). A configuration without all its seeds has
no mean here either: its cells are empty and its status says why.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_study import metrics as M
from vae_study.files import atomic_write_text
from vae_study.records.folder import StudyFolder
from vae_study.records.trial import Trial

TEX_FILE = "tables.tex"
CSV_FILE = "tables.csv"
UNIT = "nats per example"
SEARCH, CONFIRMATION = "search", "confirmation"  # tables.csv's ``stage``

# tables.csv: the columns before the searched keys, then after them.
CSV_HEAD = ["study", "stage", "configuration", "status", "n", "n_replicates"]
CSV_TAIL = [
    "quantity",
    "metric",
    "unit",
    "mean",
    "se",
    "rate_mean",
    "rate_se",
    "distortion_mean",
    "distortion_se",
    "neg_elbo_mean",
    "neg_elbo_se",
]
# tables.csv's (mean, se) column pairs after the bound's: the test R-D terms and -ELBO.
CSV_TERMS = {"rate": M.TEST_RATE, "distortion": M.TEST_DISTORTION, "neg_elbo": M.TEST_NEG_ELBO}


@dataclass(frozen=True)
class Table:
    """One table: its caption (what the numbers are, with their unit), a LaTeX label, its
    heading and rows of text cells (``"90.51 ± 0.12"`` for a mean ± s.e.)."""

    caption: str
    label: str
    head: list[str]
    rows: list[list[str]]


def quantity_name(quantity: str) -> str:
    """The bound's name in a caption: ``test NLL`` or ``test cross-entropy bound``."""
    return "test NLL" if quantity == M.QUANTITY_NLL else "test cross-entropy bound"


def bound_caption(sf: StudyFolder) -> str:
    """What a study's bound is, for a caption, e.g. "the test NLL -L_1000 (a negative
    log-likelihood, nats per example) on the first 2000 test examples"."""
    base = sf.study.base
    ev = base.eval
    on = (
        f"the first {ev.nll_examples} test examples"
        if ev.nll_examples is not None
        else "all test examples"
    )
    words = (
        "a negative log-likelihood"
        if base.quantity == M.QUANTITY_NLL
        else "a Bernoulli cross-entropy on grey levels, not a likelihood"
    )
    return f"the {quantity_name(base.quantity)} $-L_{{{ev.k}}}$ ({words}, {UNIT}) on {on}"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_TEX_MATH = {"±": r"$\pm$", "−": r"$-$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$"}
_TEX_RE = re.compile("|".join(re.escape(c) for c in (*_TEX_SPECIAL, *_TEX_MATH)))


def tex_escape(text: Any) -> str:
    """``text`` as LaTeX text: its special characters literal; ±, −, × as math; other
    non-ASCII characters dropped to ``?`` (a study's strings cannot break the document)."""
    s = _TEX_RE.sub(lambda m: _TEX_SPECIAL.get(m.group(), _TEX_MATH.get(m.group(), "")), str(text))
    s = " ".join(s.splitlines())
    return "".join(c if ord(c) < 128 else "?" for c in s)


def to_tex(tables: Sequence[Table]) -> str:
    """The LaTeX of ``tables``: each a ``table`` float holding a booktabs ``tabular``
    (needs ``\\usepackage{booktabs}``), its caption above it. Captions are LaTeX already
    (math allowed); cells and headings are escaped."""
    parts = [
        "% Written by vae_study: \\input{tables.tex} in a document with \\usepackage{booktabs}.",
        "% Numbers are mean $\\pm$ standard error over seeds; n counts the seeds.",
    ]
    for t in tables:
        cols = "l" * min(2, len(t.head)) + "r" * max(0, len(t.head) - 2)
        parts += [
            "",
            "\\begin{table}[ht]",
            "\\centering",
            "\\scriptsize",
            f"\\caption{{{t.caption}}}",
            f"\\label{{{t.label}}}",
            f"\\begin{{tabular}}{{{cols}}}",
            "\\toprule",
            " & ".join(tex_escape(h) for h in t.head) + " \\\\",
            "\\midrule",
            *(" & ".join(tex_escape(c) for c in row) + " \\\\" for row in t.rows),
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
        ]
    return "\n".join(parts) + "\n"


def write_tex(path: Path, tables: Sequence[Table]) -> Path:
    """Write ``to_tex(tables)`` to ``path`` atomically; returns ``path``."""
    atomic_write_text(path, to_tex(tables))
    return path


def mean_se(t: Trial, metric: str) -> str:
    """``mean ± se`` of a configuration; the mean alone with one seed; ``""`` without a
    mean (a configuration short of a seed)."""
    v, e = t.value(metric), t.error(metric)
    if not t.finished or math.isnan(v):
        return ""
    return f"{v:.5g}" if e is None else f"{v:.5g} ± {e:.3g}"


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def csv_rows(study: str, sf: StudyFolder) -> list[dict[str, str]]:
    """tables.csv's rows of one study: each configuration of its search, then of its
    confirmation, with its searched keys, the bound's mean, se and n and the test R-D terms.
    Empty ``mean``/``se`` where there is none (a configuration short of a seed; se with one
    seed)."""
    quantity = sf.study.base.quantity
    bound = M.bound_key("test", quantity)
    keys = [p.key for p in sf.study.search.space]
    out = []
    for stage, configs in ((SEARCH, sf.configs), (CONFIRMATION, sf.confirmed)):
        for c in configs:
            row = {
                "study": study,
                "stage": stage,
                "configuration": c.trial_id,
                "status": c.status,
                "n": str(c.n_seeds),
                "n_replicates": str(c.n_replicates),
                **{k: str(c.params.get(k, "")) for k in keys},
                "quantity": quantity,
                "metric": bound,
                "unit": UNIT,
            }
            for name, metric in {"": bound, **CSV_TERMS}.items():
                pre = f"{name}_" if name else ""
                row[f"{pre}mean"] = _number(c.value(metric)) if c.finished else ""
                row[f"{pre}se"] = _number(c.error(metric)) if c.finished else ""
            out.append(row)
    return out


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write ``rows`` (``csv_rows`` of one or more studies) to ``path`` atomically, the
    columns ``CSV_HEAD``, every searched key met, then ``CSV_TAIL``."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in CSV_HEAD and k not in CSV_TAIL and k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, [*CSV_HEAD, *keys, *CSV_TAIL], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def configurations_table(study: str, sf: StudyFolder, *, label: str) -> Table:
    """A study's configurations (search, then confirmation): searched keys, the bound, rate,
    distortion and -ELBO as mean ± s.e., and n seeds of R."""
    keys = [p.key for p in sf.study.search.space]
    bound = M.bound_key("test", sf.study.base.quantity)
    rows = []
    stages = ((SEARCH, sf.configs), (CONFIRMATION, sf.confirmed))
    for stage, configs in stages:
        for c in configs:
            rows.append(
                [
                    c.trial_id,
                    stage,
                    c.status,
                    *[_cell(c.params.get(k, "")) for k in keys],
                    mean_se(c, bound),
                    mean_se(c, M.TEST_RATE),
                    mean_se(c, M.TEST_DISTORTION),
                    mean_se(c, M.TEST_NEG_ELBO),
                    f"{c.n_seeds} of {c.n_replicates}",
                ]
            )
    name = quantity_name(sf.study.base.quantity)
    head = ["configuration", "stage", "status", *keys, name, "rate", "distortion", "-ELBO", "n"]
    caption = (
        f"Study {tex_escape(study)}: each configuration's test numbers, mean $\\pm$ standard "
        f"error over its n seeds; the bound is {bound_caption(sf)}; rate, distortion and "
        f"$-$ELBO in {UNIT} on all test examples. A configuration without all its seeds "
        "has no mean."
    )
    return Table(caption, label, head, rows)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
