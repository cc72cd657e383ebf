"""Writing a report's figures: each one a PNG and, beside it, a vector PDF and SVG of the
same stem, every file written atomically (a temporary file renamed).

Figure modules call ``figure_files.save_figure`` through the module, so one wrapper (a test
keeping the figures open) sees every figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

DPI = 110
VECTOR_SUFFIXES = (".pdf", ".svg")  # every figure is also written in these, beside its PNG
# Fonts embedded: TrueType (Type 42) in the PDF, not Type 3, as journals ask; glyphs as
# paths in the SVG, so neither file needs the fonts of the machine that opens it.
_VECTOR_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path"}


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as the PNG ``path`` and as a vector PDF and SVG of the same stem, each
    atomically (a temporary file renamed); returns ``path``."""
    with matplotlib.rc_context(_VECTOR_RC):
        for target in (path, *(path.with_suffix(s) for s in VECTOR_SUFFIXES)):
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=target.suffix[1:])
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    return path
