"""What a study folder shows: the report page (build_report), its figures and tables, the
knob plots' data, paired statistics, paper files, and compare across studies. Reads records
only, never the live study."""

from __future__ import annotations

import importlib

# Public name -> its module, imported on first use (PEP 562): importing one module of this
# subpackage does not load the others' dependencies.
_EXPORTS = {
    "build_report": "page",
    "compare": "comparison",
    "paired_contrast": "paired",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
