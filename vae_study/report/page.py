"""``vae_study report``: a study folder -> figures, ``summary.md`` and one ``index.html``.

Reads files only (no Ray, no cluster), so it works on a study that is finished, running,
interrupted or partly failed. Failed and diverged trials are listed, never plotted as
finished; a trial whose checkpoint is gone gets a note instead of pictures.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vae_study import marker
from vae_study import metrics as M
from vae_study.errors import ConfigError
from vae_study.files import atomic_write_text
from vae_study.records import results as R
from vae_study.records.folder import StudyFolder, Trial, load_folder
from vae_study.records.layout import StudyLayout
from vae_study.records.pareto import pareto_front, spread
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY, SEED_KEY
from vae_study.report import knobs, paper, plots
from vae_study.report.knobs import (
    bin_edges,
    knob_differences,
    knob_name,
    matching_text,
    varied_knobs,
)
from vae_study.report.paired import Difference, configuration_differences
from vae_study.run_files import REPORTS_DIR

MAX_MODEL_FIGURES = 5


def rd_front(trials: list[Trial]) -> list[Trial]:
    """Finished trials on the Pareto front of their TEST (rate, distortion), by test rate: the
    empirical R-D curve of the numbers the R-D plane plots. It describes test results; it is
    not a selection (a study selects on its objectives: ``study_front``, ``best_trial``)."""
    done = [t for t in trials if t.finished]
    idx = pareto_front(
        [[t.value(M.TEST_RATE), t.value(M.TEST_DISTORTION)] for t in done], ["min", "min"]
    )
    return sorted((done[i] for i in idx), key=lambda t: t.value(M.TEST_RATE))


def study_front(sf: StudyFolder) -> list[Trial]:
    """Multi-objective studies: the finished trials on the Pareto set of the study's own
    objectives (results.csv ``pareto``; validation metrics unless search.select_on_test), by
    test rate. Empty for a single-objective study."""
    if not sf.study.search.multi_objective:
        return []
    return sorted(
        (t for t in sf.configs if t.finished and t.pareto), key=lambda t: t.value(M.TEST_RATE)
    )


def best_trial(sf: StudyFolder) -> Trial | None:
    """The selected trial: the best finished trial (configuration, on the mean over its
    seeds) on the study's first objective (a validation metric unless
    search.select_on_test)."""
    obj = sf.study.search.objectives[0]
    done = [t for t in sf.configs if t.finished and math.isfinite(t.value(obj.metric))]
    if not done:
        return None
    sign = 1 if obj.mode == "min" else -1
    return min(done, key=lambda t: sign * t.value(obj.metric))


def _objective_names(sf: StudyFolder) -> str:
    return ", ".join(o.metric for o in sf.study.search.objectives)


def _on_test(sf: StudyFolder) -> list[str]:
    return [o.metric for o in sf.study.search.objectives if M.is_test_metric(o.metric)]


def selection_words(sf: StudyFolder) -> str:
    """How the selected trial was chosen, e.g. "selected on validation (val/nll)"."""
    metric = sf.study.search.objectives[0].metric
    if M.is_test_metric(metric):
        return f"selected on test (search.select_on_test): {metric}"
    return f"selected on validation ({metric})"


def front_words(sf: StudyFolder) -> str:
    """What the study's Pareto set was computed on."""
    split = "test, search.select_on_test" if _on_test(sf) else "validation"
    return f"Pareto set on the study's objectives ({_objective_names(sf)}; {split})"


def selection_warning(sf: StudyFolder) -> str | None:
    """The warning a study that selects on test metrics carries; None when it does not."""
    on_test = _on_test(sf)
    if not on_test:
        return None
    return (
        f"Warning: this study selects on test metrics ({', '.join(on_test)}; "
        "search.select_on_test: true): its test numbers are optimistically biased, not "
        "held-out estimates."
    )


def optimism_warning(sf: StudyFolder) -> str | None:
    """The warning a report without a confirmation carries: the selected configuration won
    on validation with the seeds that trained it, so its test number holds the luck that
    made it win (the winner's curse). None once confirmed configurations are in the folder,
    and for a study that selects on test (``selection_warning`` says more)."""
    if sf.confirmed or _on_test(sf) or not any(t.finished for t in sf.configs):
        return None
    how = (
        "the confirmation (search.confirm) has not run yet"
        if sf.study.search.confirm is not None
        else "add search.confirm, e.g. {top: 3, replicates: 3}, to retrain the best "
        "configurations with fresh seeds and report their test numbers instead"
    )
    return (
        f"Warning: the selected {_unit(sf)}'s test numbers are optimistic: it won on "
        "validation with the same seeds that trained it (the winner's curse); " + how + "."
    )


def protocol_lines(sf: StudyFolder) -> list[str]:
    """What the numbers are and which examples each was computed on."""
    base = sf.study.base
    quantity, ev = base.quantity, base.eval
    bound, val_bound = M.bound_key("test", quantity), M.bound_key("val", quantity)
    counts = sorted(
        {
            int(t.value(M.TEST_NLL_EXAMPLES))
            for t in sf.trials
            if math.isfinite(t.value(M.TEST_NLL_EXAMPLES))
        }
    )
    if len(counts) == 1:
        nll_n = f"the first {counts[0]} test examples ({M.TEST_NLL_EXAMPLES})"
    elif counts:
        nll_n = f"the first {counts[0]} to {counts[-1]} test examples ({M.TEST_NLL_EXAMPLES})"
    elif ev.nll_examples is not None:
        nll_n = f"the first {ev.nll_examples} test examples (eval.nll_examples)"
    else:
        nll_n = "all test examples (eval.nll_examples: null)"
    bpd = f", with bits/dim ({M.TEST_BPD}, {M.VAL_BPD})" if base.dequantized else ""
    val_n = min(ev.val_examples, base.data.val_size)  # evaluate_val: at most the split
    val = (
        f"{val_bound} on the first {val_n} validation examples (eval.val_examples = "
        f"{ev.val_examples}, data.val_size = {base.data.val_size}) with eval.val_k = "
        f"{ev.val_k} importance samples"
        if val_n > 0
        else f"no {val_bound} (eval.val_examples or data.val_size is 0)"
    )
    return [
        f"quantity: the bound -L_K is {bound} ({val_bound} on validation), a "
        f"{M.QUANTITY_WORDS[quantity]}{bpd}, with eval.k = {ev.k} importance samples",
        f"examples: {bound} and the gap -ELBO - bound ({M.TEST_BOUND_GAP}, both terms on the "
        f"same examples) on {nll_n}; test rate, distortion, -ELBO and active units on all test "
        f"examples; mutual information and marginal KL on the first eval.surgery_examples = "
        f"{ev.surgery_examples} test examples; {val}; val -ELBO, rate and distortion on the "
        "whole validation split after the trial's last reported epoch",
    ]


def _columns(sf: StudyFolder) -> list[tuple[str, str]]:
    """(heading, metric) of the numbers in every trial table: validation, then test."""
    quantity, dequantized = sf.study.base.quantity, sf.study.base.dequantized
    name = "NLL" if quantity == M.QUANTITY_NLL else "CE bound"
    cols = [(f"val {name}", M.bound_key("val", quantity))]
    cols += [("val bits/dim", M.VAL_BPD)] if dequantized else []
    cols += [
        ("val -ELBO", M.VAL_NEG_ELBO),
        ("val rate", M.VAL_RATE),
        ("val distortion", M.VAL_DISTORTION),
        ("test rate", M.TEST_RATE),
        ("test distortion", M.TEST_DISTORTION),
        ("test -ELBO", M.TEST_NEG_ELBO),
        (f"test {name}", M.bound_key("test", quantity)),
    ]
    cols += [("test bits/dim", M.TEST_BPD)] if dequantized else []
    return cols + [
        ("test gap -ELBO - bound", M.TEST_BOUND_GAP),
        ("test active units", M.TEST_ACTIVE_UNITS),
    ]


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

    if (sf.folder / R.RESULTS_FILE).is_file():
        shutil.copyfile(sf.folder / R.RESULTS_FILE, out / R.RESULTS_FILE)
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
        plots.rate_distortion_plane(
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
            if _replicated(sf)
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
        matched = knobs.matching_text(searched)
        add(
            plots.knobs(
                sf.configs, out / "knobs.png", searched=searched, quantity=sf.study.base.quantity
            ),
            "The searched knobs ("
            + ", ".join(knobs.knob_name(p.key) for p in varied)
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
                if _replicated_search(sf)
                else f"{knobs.NO_PAIRS}; "
            )
            + "under each panel, how it matched and what its bars are; panels without matched "
            "trials say so.",
            "No finished trial yet: no knob plots.",
        )
    else:
        notes.append("The study varies none of beta, K and latent size: no knob plots.")
    add(
        plots.rate_split(sf.configs, shown_front, out / "rate_split.png", front_label=shown_words),
        "Where the rate goes: R = I(x; z) + KL(q(z) || p(z)) per trial, and the KL of each "
        f"latent dimension for the {shown_words}.",
        "No finished trial yet: no rate split.",
    )
    add(
        plots.learning_curves(sf.trials, out / "learning_curves.png"),
        "Learning curves (validation), coloured by beta; stopped trials dashed, failed or "
        "diverged ones end in a red cross.",
        "No trial has reported an epoch yet.",
    )
    _search_figure(sf, out, add, notes)
    _model_figures(sf, best, shown_front, shown_words, out, figures, notes)

    seconds = time.perf_counter() - started
    summary = _summary(sf, best, front, notes, seconds)
    paper.write_tex(out / paper.TEX_FILE, paper_tables(sf))
    paper.write_csv(out / paper.CSV_FILE, paper.csv_rows(sf.study.name, sf))
    atomic_write_text(out / "summary.md", summary)
    atomic_write_text(out / "index.html", _html(sf, best, front, figures, notes, seconds))
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


def _search_figure(sf: StudyFolder, out: Path, add: Any, notes: list[str]) -> None:
    db = StudyLayout(sf.folder).optuna_db
    if not db.is_file():
        notes.append("No optuna.db in the study folder: no search history.")
        return
    from vae_study.records.optuna_db import load_optuna_study

    try:
        study = load_optuna_study(sf.folder, sf.study.name)
    except Exception as exc:
        notes.append(f"The Optuna study could not be read ({exc}): no search history.")
        return
    obj = sf.study.search.objectives[0].metric
    add(
        plots.search_history(study, obj, out / "search.png"),
        f"The search: Optuna's history of {obj} and the importance of each parameter.",
        "Fewer than two finished Optuna trials: no search history yet.",
    )


def _model_figures(
    sf: StudyFolder,
    best: Trial | None,
    front: list[Trial],
    front_words: str,
    out: Path,
    figures: list[tuple[str, str]],
    notes: list[str],
) -> None:
    chosen: list[tuple[Trial, str]] = []
    if best is not None:
        chosen.append((best, selection_words(sf)))
    for t in spread(sorted(front, key=lambda t: t.beta), MAX_MODEL_FIGURES - len(chosen)):
        if all(t.trial_id != c.trial_id for c, _ in chosen):
            chosen.append((t, front_words.removeprefix("trials of the ")))
    if not chosen:
        return
    from vae_study.config.run import run_config_from_dict
    from vae_study.core.checkpoint import load
    from vae_study.core.data import load_datasets
    from vae_study.core.model import VAE
    from vae_study.errors import VaeStudyError

    try:
        data = load_datasets(sf.study.base.data, dequantize=sf.study.base.dequantized)
    except VaeStudyError as exc:
        notes.append(f"Model pictures skipped: the test data cannot be read ({exc}).")
        return
    for trial, why in sorted(chosen, key=lambda c: c[0].beta):
        if trial.checkpoint is None:
            notes.append(f"Trial {trial.trial_id}: no checkpoint left, its pictures are skipped.")
            continue
        try:
            state = load(trial.checkpoint)
            cfg = run_config_from_dict(state.config)
            model = VAE(cfg.model, state.shape)
            model.load_state_dict(state.model)
        except (VaeStudyError, RuntimeError, KeyError) as exc:
            notes.append(
                f"Trial {trial.trial_id}: its checkpoint cannot be used ({exc}); pictures skipped."
            )
            continue
        name = model_figure_name(trial.trial_id)
        # One member's model (the lowest replicate that finished), with its own numbers.
        member = trial.members[0] if trial.n_replicates > 1 and trial.members else trial
        which = (
            f"Configuration {trial.trial_id} ({why}), the model of its replicate "
            f"{_fmt(member.value(REPLICATE_KEY))} (seed {_fmt(member.value(SEED_KEY))})"
            if member is not trial
            else f"Trial {trial.trial_id} ({why})"
        )
        title = (
            f"{which}: beta {trial.beta:.3g}, latent size "
            f"{trial.latent_dim}, K {trial.k}, test -ELBO "
            f"{member.value(M.TEST_NEG_ELBO):.1f} = R {member.value(M.TEST_RATE):.1f} + "
            f"D {member.value(M.TEST_DISTORTION):.1f} nats"
        )
        plots.model_pictures(
            trial, model, data.test.x, data.test.labels, out / name, title, shape=data.shape
        )
        figures.append((name, title))


def model_figure_name(trial_id: str) -> str:
    """``model_<trial id>.png``, a plain file name whatever the id holds (``/``, ``..``): other
    characters become ``_``, and a hash of the id keeps two such ids apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)[:80]
    if safe != trial_id:
        safe += "-" + hashlib.sha1(trial_id.encode("utf-8")).hexdigest()[:8]
    return f"model_{safe}.png"


_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def _md(value: Any) -> str:
    """Text for markdown (a table cell, a list item): markup characters taken literally,
    HTML escaped, newlines as ``<br>``, so a study's strings cannot break the layout."""
    text = html.escape(_MD_SPECIAL.sub(r"\\\1", str(value)), quote=False)
    return "<br>".join(text.splitlines())


def _code(value: Any) -> str:
    """A markdown code span holding ``value`` literally (fenced past its own backticks)."""
    text = " ".join(str(value).splitlines())
    fence = "`" * (1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _mean_se(t: Trial, metric: str) -> str:
    """``mean ± se`` where the configuration has a standard error, else the number alone."""
    e = t.error(metric)
    v = t.value(metric)
    return _fmt(v) if e is None or math.isnan(v) else f"{v:.5g} ± {e:.3g}"


def _replicated(sf: StudyFolder) -> bool:
    """Whether the study trains several seeds per configuration (its tables have a seeds
    column and mean ± se cells, its rows are configurations)."""
    return any(c.n_replicates > 1 for c in (*sf.configs, *sf.confirmed))


def _by_config(sf: StudyFolder) -> bool:
    """Whether the table's rows are configurations named by their config_id (a study
    written with replicates and packs), not trials named by Ray's trial id."""
    return _replicated(sf) or any(
        c.members and c.trial_id != c.members[0].trial_id for c in sf.configs
    )


def _head(sf: StudyFolder) -> list[str]:
    keys = [p.key for p in sf.study.search.space]
    seeds = ["seeds"] if _replicated(sf) else []
    return [_unit(sf), "status", *seeds, *keys, *[h for h, _ in _columns(sf)]]


def _trial_line(sf: StudyFolder, t: Trial) -> list[str]:
    seeds = [f"{t.n_seeds} of {t.n_replicates}"] if _replicated(sf) else []
    return [
        t.trial_id,
        t.status,
        *seeds,
        *[_fmt(t.params.get(p.key, "")) for p in sf.study.search.space],
        *[_mean_se(t, m) for _, m in _columns(sf)],
    ]


def confirmation_words(sf: StudyFolder) -> str:
    """The headline of a study with a confirmation stage (see ``selection.how_confirmed``)."""
    from vae_study.records.selection import how_confirmed as words

    return f"Confirmed configurations: test mean ± standard error; {words(sf.study)}"


def confirmation_table(sf: StudyFolder) -> tuple[list[str], list[list[str]]]:
    """(head, rows) of the headline table: each confirmed configuration with the means of
    the search that selected it (its objectives, over the search's seeds), then its
    confirmation numbers as mean ± se over the fresh seeds, with how many finished."""
    from vae_study.records.selection import search_replicates

    objectives = [o.metric for o in sf.study.search.objectives]
    searched = {c.trial_id: c for c in sf.configs}
    n_search = search_replicates(sf.study)
    head = [
        "configuration",
        "status",
        "seeds",
        *[p.key for p in sf.study.search.space],
        *[f"search {m} (mean of {n_search})" for m in objectives],
        *[h for h, _ in _columns(sf)],
    ]
    rows = []

    def order(c: Trial) -> tuple[bool, int]:  # a failed one last: out of the ranking
        return (c.status == R.FAILED, int(c.trial_id) if c.trial_id.isdigit() else 0)

    for c in sorted(sf.confirmed, key=order):
        found = searched.get(c.trial_id)
        rows.append(
            [
                c.trial_id,
                _status_words(c),
                f"{c.n_seeds} of {c.n_replicates}",
                *[_fmt(c.params.get(p.key, "")) for p in sf.study.search.space],
                *[_fmt(found.value(m)) if found else "" for m in objectives],
                *[_mean_se(c, m) for _, m in _columns(sf)],
            ]
        )
    return head, rows


def _replicated_search(sf: StudyFolder) -> bool:
    """Whether the search trains several seeds per configuration (paired by seed)."""
    return any(c.n_replicates > 1 for c in sf.configs)


_HOW_PAIRED = (
    "mean ± s.e. = mean(d) ± std(d, ddof 1) / sqrt(n) over the n per-seed differences d; "
    "the 95% interval is mean ± t(0.975, n - 1) × s.e. (Student's t); a configuration "
    "without all its seeds is left out."
)


def _difference_cells(d: Difference, *, cells: bool) -> list[str]:
    c = d.contrast
    return [
        *([str(c.cells)] if cells else []),
        f"{c.mean:.4g} ± {c.se:.3g}",
        f"{c.low:.4g} to {c.high:.4g}",
        str(c.n),
    ]


def differences_sections(sf: StudyFolder) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(heading, how its numbers were made, head, rows) of each differences table: the
    search's (``knobs.knob_differences``: pairs of levels of each discrete knob, paired by
    seed at matched settings) where the search has replicates, and the confirmation's
    (``paired.configuration_differences``: pairs of confirmed configurations, on the test
    counterparts of the objectives and the test bound) where it has run. Rows: b - a."""
    out = []
    tail = ["mean difference ± s.e.", "95% interval (t)", "n (seeds)"]
    if _replicated_search(sf):
        searched = sf.study.search.space
        rows = [
            [
                f"{knob_name(d.knob)} {d.b} − {knob_name(d.knob)} {d.a}",
                d.metric,
                *_difference_cells(d, cells=True),
            ]
            for d in knob_differences(sf.configs, searched, sf.study.base.quantity)
        ]
        continuous = [knob_name(p.key) for p in varied_knobs(searched) if bin_edges(p)]
        discrete = [knob_name(p.key) for p in varied_knobs(searched) if not bin_edges(p)]
        matched = matching_text(searched) or "one key searched: all configurations in one cell"
        words = (
            "Each row is metric(b) − metric(a) for two levels of a knob, from per-seed paired "
            "differences: seed s at level b minus seed s at level a in the same matched cell "
            f"(the other searched keys matched as in the knob plots: {matched}); a level of "
            "several configurations in a cell is their per-seed mean; where several cells hold "
            "both levels, each seed's differences are averaged over them (equal weight; "
            "'cells' says how many), so n counts seeds, not seeds × cells. " + _HOW_PAIRED
        )
        if continuous:
            words += (
                f" {', '.join(continuous)}: continuous, its paired differences are the knob "
                "plot's bars, not level pairs here."
            )
        if not rows:
            words += (
                f" No two levels of {', '.join(discrete)} pair two seeds in a matched cell."
                if discrete
                else " No knob with discrete levels is searched: no rows."
            )
        out.append(
            (
                "Differences between knob levels, paired by seed",
                words,
                ["difference (b − a)", "metric", "cells", *tail],
                rows,
            )
        )
    if sf.confirmed:
        metrics = _confirm_metrics(sf)
        confirmed = sorted(sf.confirmed, key=lambda c: _id_order(c.trial_id))
        rows = [
            [
                f"configuration {d.b} − configuration {d.a}",
                d.metric,
                *_difference_cells(d, cells=False),
            ]
            for m in metrics
            for d in configuration_differences(confirmed, m)
        ]
        words = (
            "Each row is metric(b) − metric(a) for two confirmed configurations, from their "
            "per-seed differences over the confirmation's fresh seeds (the same seed in every "
            "configuration). " + _HOW_PAIRED
        )
        if not rows:
            words += " Fewer than two confirmed configurations have all their seeds: no rows."
        out.append(
            (
                "Differences between confirmed configurations, paired by seed",
                words,
                ["difference (b − a)", "metric", *tail],
                rows,
            )
        )
    return out


def _confirm_metrics(sf: StudyFolder) -> list[str]:
    """The test bound, then the test counterpart of each (validation) objective."""
    out = [M.bound_key("test", sf.study.base.quantity)]
    for o in sf.study.search.objectives:
        test = "test/" + o.metric.split("/", 1)[-1]
        metric = test if test in M.TEST_SCALARS else o.metric
        if metric not in out:
            out.append(metric)
    return out


def _id_order(trial_id: str) -> tuple[int, int | str]:
    return (0, int(trial_id)) if trial_id.isdigit() else (1, trial_id)


def _status_words(c: Trial) -> str:
    """A configuration's status; a failed one's with its first member's error (a seed that
    diverged): it has no mean, and the reader sees why."""
    if c.status != R.FAILED:
        return c.status
    errors = [
        str(m.metrics[R.ERROR_KEY])
        for m in c.members
        if m.status == R.FAILED and isinstance(m.metrics.get(R.ERROR_KEY), str)
    ]
    return f"{c.status}: {errors[0]}" if errors else c.status


def _table_md(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md, r)) + " |" for r in rows]
    return "\n".join(lines)


def _summary(
    sf: StudyFolder, best: Trial | None, front: list[Trial], notes: list[str], seconds: float
) -> str:
    keys = [p.key for p in sf.study.search.space]
    head = _head(sf)
    counts: dict[str, int] = {}
    for t in sf.configs:
        counts[t.status] = counts.get(t.status, 0) + 1
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in sf.study.search.objectives)
    warning = selection_warning(sf)
    parts = [
        f"# Study {sf.study.name}",
        "",
        f"- folder: {_code(sf.folder)}",
        f"- {_count_words(sf)} ("
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")
        + ")",
        f"- searched: {', '.join(keys)}; objectives: {objectives}; "
        f"algorithm {sf.study.search.algorithm}",
        *[f"- {line}" for line in protocol_lines(sf)],
        "- numbers are nats per example (bits/dim where a column says so)",
        "",
    ]
    if warning:
        parts += [f"> **{warning}**", ""]
    optimism = optimism_warning(sf)
    if optimism:
        parts += [f"> **{optimism}**", ""]
    if sf.confirmed:
        c_head, c_rows = confirmation_table(sf)
        parts += [f"## {confirmation_words(sf)}", "", _table_md(c_rows, c_head), ""]
    if best is not None:
        parts += [
            f"## Selected {_unit(sf)}: {selection_words(sf)}",
            "",
            _table_md([_trial_line(sf, best)], head),
            "",
        ]
    chosen = study_front(sf)
    if chosen:
        parts += [
            f"## {front_words(sf)}",
            "",
            _table_md([_trial_line(sf, t) for t in chosen], head),
            "",
        ]
    if front:
        parts += [
            f"## {_RD_FRONT_WORDS}",
            "",
            _table_md([_trial_line(sf, t) for t in front], head),
            "",
        ]
    for heading, words, d_head, d_rows in differences_sections(sf):
        parts += [f"## {heading}", "", _md(words), ""]
        if d_rows:
            parts += [_table_md(d_rows, d_head), ""]
    bad = [(t, "") for t in sf.trials if t.status == R.FAILED]
    bad += [(t, ", confirmation") for t in sf.confirm_trials if t.status == R.FAILED]
    if bad:
        parts += ["## Failed trials (diverged or crashed)", ""]
        parts += [
            f"- {_md(t.trial_id)} ({_md(t.status)}{_md(_member_words(t) + where)}): "
            f"{_md(t.metrics.get(R.ERROR_KEY) or 'no message')}"
            for t, where in bad
        ]
        parts.append("")
    if notes:
        parts += ["## Notes", ""] + [f"- {_md(n)}" for n in notes] + [""]
    parts.append(f"Report built in {seconds:.1f} s.")
    return "\n".join(parts) + "\n"


def _member_words(t: Trial) -> str:
    """``, configuration 3, replicate 1`` for a member row of a replicated table, else ''."""
    cid, rep = t.value(CONFIG_KEY), t.value(REPLICATE_KEY)
    if not (math.isfinite(cid) and math.isfinite(rep)):
        return ""
    return f", configuration {int(cid)}, replicate {int(rep)}"


def _unit(sf: StudyFolder) -> str:
    """What a table row is: a trial, or a configuration (of one or more seeds)."""
    return "configuration" if _by_config(sf) else "trial"


def _count_words(sf: StudyFolder) -> str:
    """How far the study is: configurations (trials) of search.num_trials, members."""
    words = f"{_unit(sf)}s: {len(sf.configs)} of {sf.study.search.num_trials}"
    if _replicated(sf):
        words += f", {len(sf.trials)} runs (seeds) in results.csv"
    return words


_RD_FRONT_WORDS = (
    "Rate-distortion Pareto front on test (rate, distortion): it describes the "
    "test numbers and is not a selection"
)


def _html(
    sf: StudyFolder,
    best: Trial | None,
    front: list[Trial],
    figures: list[tuple[str, str]],
    notes: list[str],
    seconds: float,
) -> str:
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
        return grid(_head(sf), [_trial_line(sf, t) for t in trials])

    body = [
        f"<h1>Study {esc(sf.study.name)}</h1>",
        f"<p>{esc(_count_words(sf))}; nats per example "
        "(bits/dim where a column says so). Files: "
        f'<a href="{R.RESULTS_FILE}">{R.RESULTS_FILE}</a>, '
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
            f"<h2>Selected {_unit(sf)}: {esc(selection_words(sf))}</h2>",
            table([best]),
        ]
    chosen = study_front(sf)
    if chosen:
        body += [f"<h2>{esc(front_words(sf))}</h2>", table(chosen)]
    if front:
        body += [f"<h2>{esc(_RD_FRONT_WORDS)}</h2>", table(front)]
    for heading, words, d_head, d_rows in differences_sections(sf):
        body += [f"<h2>{esc(heading)}</h2>", f"<p>{esc(words)}</p>"]
        if d_rows:
            body.append(grid(d_head, d_rows))
    for name, caption in figures:
        stem = Path(name).stem
        vector = ", ".join(
            f'<a href="{esc(stem + s)}">{esc(stem + s)}</a>' for s in plots.VECTOR_SUFFIXES
        )
        body.append(
            f'<figure><img src="{esc(name)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)} Vector: {vector}.</figcaption></figure>"
        )
    body += [f"<h2>All {_unit(sf)}s</h2>", table(sf.configs)]
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
