"""Where dataset files are found (``data.root``, ``$VAE_STUDY_DATA`` or the per-user cache),
and how a reader says that they are missing or cannot be read."""

from __future__ import annotations

import os
from pathlib import Path

from vae_study.errors import DataError


def default_cache_dir() -> Path:
    """The per-user cache folder: $XDG_CACHE_HOME/vae_study or ~/.cache/vae_study."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae_study"


def resolve_root(root: str | None) -> Path:
    """data.root, else $VAE_STUDY_DATA, else the per-user cache's data folder; one that
    exists and is not a folder is a ``DataError`` naming where it came from."""
    if root:
        path, what = Path(root).expanduser(), "data.root"
    elif os.environ.get("VAE_STUDY_DATA"):
        path, what = Path(os.environ["VAE_STUDY_DATA"]).expanduser(), "VAE_STUDY_DATA"
    else:
        path, what = default_cache_dir() / "data", "the data cache"
    if os.path.exists(path) and not path.is_dir():
        raise DataError(f"{what}: {path} is not a folder; give the folder that holds the data")
    return path


def error_reason(exc: BaseException) -> str:
    """``exc`` in one line, cut after 300 characters, for a ``DataError``'s message: a
    download error of torchvision's spans several lines."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)
