"""``vae_study report``: a study folder -> figures, ``summary.md`` and one ``index.html``.

Reads files only (no Ray, no cluster), so it works on a study that is finished, running,
interrupted or partly failed. Failed and diverged trials are listed, never plotted as
finished; a trial whose checkpoint is gone gets a note instead of pictures.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from vae_study import marker
from vae_study.files import atomic_write_text
from vae_study.records.folder import StudyFolder, load_folder
from vae_study.records.layout import RESULTS_FILE
from vae_study.report import knob_matching, knob_plots, knobs, paper
from vae_study.report.differences import differences_sections
from vae_study.report.headline import (
    best_trial,
    front_words,
    rd_front,
    selection_words,
    study_front,
)
from vae_study.report.index_html import index_html
from vae_study.report.learning_curves import learning_curves
from vae_study.report.model_figures import model_figures
from vae_study.report.rate_split import rate_split
from vae_study.report.rd_plane import rate_distortion_plane
from vae_study.report.report_folder import check_report_folder
from vae_study.report.search_figure import search_figure
from vae_study.report.summary_md import summary_md
from vae_study.report.trial_tables import (
    confirmation_table,
    confirmation_words,
    replicated,
    replicated_search,
)
from vae_study.run_files import REPORTS_DIR


def build_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the study in ``folder`` into ``out`` (default reports/<name>):
    a new folder, or a report folder vae_study made (``check_report_folder``), which is
    rewritten; anything else is refused before a file is written."""
    started = time.perf_counter()
    sf = load_folder(folder)
    out = Path(out) if out is not None else Path(REPORTS_DIR) / sf.study.name
    check_report_folder(out, sf.folder)
    marker.write(out, marker.REPORT)  # made if missing; marks a report of an older vae_study
    notes: list[str] = []
    figures: list[tuple[str, str]] = []  # (file name, caption)

    if (sf.folder / RESULTS_FILE).is_file():
        shutil.copyfile(sf.folder / RESULTS_FILE, out / RESULTS_FILE)
    if sf.study.search.confirm is not None and not sf.confirmed:
        notes.append(
            "search.confirm is set but the confirmation has no results yet (it runs once the "
            "search has finished): the selected configuration below is the search's, its "
            "test numbers from the seeds it was selected with."
        )
    front = rd_front(sf.configs)
    chosen_front = study_front(sf)
    best = best_trial(sf)
    selected, selected_label = (
        (chosen_front, front_words(sf))
        if sf.study.search.multi_objective
        else ([best] if best else [], selection_words(sf))
    )
    # The trials the rate split and model pictures show: the study's own Pareto set when it
    # has several objectives, else the test R-D front.
    shown_front, shown_words = (
        (chosen_front, "trials of the study's Pareto set")
        if chosen_front
        else (front, "trials of the test R-D front")
    )

    def add(path: Path | None, caption: str, missing: str) -> None:
        if path is None:
            notes.append(missing)
        else:
            figures.append((path.name, caption))

    add(
        rate_distortion_plane(
            sf.configs,
            out / "rate_distortion.png",
            selected=selected,
            selected_label=selected_label,
            confirmed=sf.confirmed,
        ),
        (
            "The rate-distortion plane: each finished configuration at its mean test (rate, "
            "distortion) over its seeds, with +- standard-error bars in both (none for a "
            "configuration with one seed), coloured by beta; the red staircase is the Pareto "
            "front of those means"
            if replicated(sf)
            else "The rate-distortion plane: each finished trial at its test (rate, "
            "distortion), coloured by beta; the red staircase is the Pareto front of those "
            "test numbers"
        )
        + f" (the empirical R-D curve); black squares: {selected_label}; "
        + (
            "white diamonds: the confirmed configurations at their test mean ± standard "
            "error over the confirmation's fresh seeds; "
            if sf.confirmed
            else ""
        )
        + "dashed lines have equal -ELBO = R + D.",
        "No finished trial yet: the rate-distortion plane is empty.",
    )
    searched = sf.study.search.space
    varied = knobs.varied_knobs(searched)
    if varied:
        matched = knob_matching.matching_text(searched)
        add(
            knob_plots.knobs(
                sf.configs, out / "knobs.png", searched=searched, quantity=sf.study.base.quantity
            ),
            "The searched knobs ("
            + ", ".join(knob_matching.knob_name(p.key) for p in varied)
            + ") against test metrics, the bound as "
            + knobs.bound_label(sf.study.base.quantity)
            + "; each line compares only trials at matched settings of the other searched "
            "knobs"
            + (f" ({matched})" if matched else "")
            + "; n marks points that average several runs (seeds); "
            + (
                "a bar is +- the standard error of a point's difference from its line's "
                "first point (the reference, no bar), from per-seed paired differences (each "
                "seed is the same in every configuration); "
                if replicated_search(sf)
                else f"{knobs.NO_PAIRS}; "
            )
            + "under each panel, how it matched and what its bars are; panels without matched "
            "trials say so.",
            "No finished trial yet: no knob plots.",
        )
    else:
        notes.append("The study varies none of beta, K and latent size: no knob plots.")
    add(
        rate_split(sf.configs, shown_front, out / "rate_split.png", front_label=shown_words),
        "Where the rate goes: R = I(x; z) + KL(q(z) || p(z)) per trial, and the KL of each "
        f"latent dimension for the {shown_words}.",
        "No finished trial yet: no rate split.",
    )
    add(
        learning_curves(sf.trials, out / "learning_curves.png"),
        "Learning curves (validation), coloured by beta; stopped trials dashed, failed or "
        "diverged ones end in a red cross.",
        "No trial has reported an epoch yet.",
    )
    search_figure(sf, out, add, notes)
    model_figures(sf, best, shown_front, shown_words, out, figures, notes)

    seconds = time.perf_counter() - started
    summary = summary_md(sf, best, front, notes, seconds)
    paper.write_tex(out / paper.TEX_FILE, paper_tables(sf))
    paper.write_csv(out / paper.CSV_FILE, paper.csv_rows(sf.study.name, sf))
    atomic_write_text(out / "summary.md", summary)
    atomic_write_text(out / "index.html", index_html(sf, best, front, figures, notes, seconds))
    return out


def paper_tables(sf: StudyFolder) -> list[paper.Table]:
    """The tables of ``tables.tex``: the confirmation's headline (where it has run), every
    configuration (``paper.configurations_table``) and the differences tables."""
    bound = paper.bound_caption(sf)
    tables = []
    if sf.confirmed:
        tables.append(
            paper.Table(
                paper.tex_escape(confirmation_words(sf))
                + f"; the bound is {bound}; rate, distortion and $-$ELBO in {paper.UNIT}.",
                "tab:confirmation",
                *confirmation_table(sf),
            )
        )
    tables.append(paper.configurations_table(sf.study.name, sf, label="tab:configurations"))
    for i, (heading, words, head, rows) in enumerate(differences_sections(sf)):
        if rows:
            caption = f"{heading}. {words} In {paper.UNIT}."
            tables.append(
                paper.Table(paper.tex_escape(caption), f"tab:differences-{i}", head, rows)
            )
    return tables
