"""Which folder a report may write into: a new or empty one, or a report folder vae_study
made (its marker, or an older vae_study's report files and nothing else); never the study
folder, nor a folder of the user's."""

from __future__ import annotations

from pathlib import Path

from vae_study import marker
from vae_study.errors import ConfigError

REPORT_SUFFIXES = (
    ".html",
    ".md",
    ".png",
    ".pdf",
    ".svg",
    ".tex",
    ".csv",
)  # every file a report folder holds


def check_report_folder(out: str | Path, study_folder: str | Path) -> None:
    """Refuse a report folder ``out`` that a report would overwrite but did not make: a
    file, a folder of the user's (one line naming the file in the way), the study folder
    itself or a folder inside it. A report's own folder holds the report marker; one an older
    vae_study wrote (no marker) holds ``index.html`` and ``summary.md`` and nothing but the
    report's files."""
    out, study_folder = Path(out), Path(study_folder)
    fix = "give a new or empty folder (--out DIR, report.dir in a study file)"
    inside = out.absolute().resolve()
    if inside == study_folder.resolve() or study_folder.resolve() in inside.parents:
        raise ConfigError(
            f"report folder {out} is the study folder {study_folder} or inside it, whose "
            f"files are the study's; {fix}"
        )
    marker.check_owned(out, marker.REPORT, legacy=_legacy_report_folder, fix=fix)


def _legacy_report_folder(out: Path) -> bool:
    """Whether ``out`` (no marker) is a report an older vae_study wrote: ``index.html`` and
    ``summary.md``, and only files a report writes (or an atomic write's leftover)."""
    names = {"index.html", "summary.md"}
    for p in out.iterdir():
        tmp = p.name.startswith(".") and p.name.endswith(".tmp")
        if not tmp and (p.suffix not in REPORT_SUFFIXES or not p.is_file() or p.is_symlink()):
            return False
        names.discard(p.name)
    return not names
