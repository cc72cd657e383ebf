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

from . import metrics as M
from . import plots
from . import results as R
from .checkpoint import atomic_write_text
from .pareto import pareto_front
from .study_folder import StudyFolder, Trial, load_folder

MAX_MODEL_FIGURES = 5


def rd_front(trials: list[Trial]) -> list[Trial]:
    """Finished trials on the (rate, distortion) Pareto front, by rate."""
    done = [t for t in trials if t.finished]
    idx = pareto_front([[t.value(M.TEST_RATE), t.value(M.TEST_DISTORTION)] for t in done],
                       ["min", "min"])
    return sorted((done[i] for i in idx), key=lambda t: t.value(M.TEST_RATE))


def best_trial(sf: StudyFolder) -> Trial | None:
    """The best finished trial on the study's first objective."""
    obj = sf.study.search.objectives[0]
    done = [t for t in sf.trials if t.finished and math.isfinite(t.value(obj.metric))]
    if not done:
        return None
    sign = 1 if obj.mode == "min" else -1
    return min(done, key=lambda t: sign * t.value(obj.metric))


def _spread(front: list[Trial], n: int) -> list[Trial]:
    """Up to n front trials from low to high beta, evenly spread."""
    by_beta = sorted(front, key=lambda t: t.beta)
    if len(by_beta) <= n:
        return by_beta
    step = (len(by_beta) - 1) / (n - 1)
    return [by_beta[round(i * step)] for i in range(n)]


def build_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the study in ``folder`` into ``out`` (default reports/<name>)."""
    started = time.perf_counter()
    sf = load_folder(folder)
    out = Path(out) if out is not None else Path("reports") / sf.study.name
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figures: list[tuple[str, str]] = []  # (file name, caption)

    if (sf.folder / R.RESULTS_FILE).is_file():
        shutil.copyfile(sf.folder / R.RESULTS_FILE, out / R.RESULTS_FILE)
    front = rd_front(sf.trials)
    best = best_trial(sf)

    def add(path: Path | None, caption: str, missing: str) -> None:
        if path is None:
            notes.append(missing)
        else:
            figures.append((path.name, caption))

    add(plots.rate_distortion_plane(sf.trials, out / "rate_distortion.png"),
        "The rate-distortion plane: each finished trial at its test (rate, distortion), "
        "coloured by beta; the red staircase is the Pareto front (the empirical R-D curve); "
        "dashed lines have equal -ELBO = R + D.",
        "No finished trial yet: the rate-distortion plane is empty.")
    add(plots.knobs(sf.trials, out / "knobs.png"),
        "The knobs against rate, distortion and the bound: beta, K (VAE and IWAE objectives) "
        "and latent size.", "No finished trial yet: no knob plots.")
    add(plots.rate_split(sf.trials, front, out / "rate_split.png"),
        "Where the rate goes: R = I(x; z) + KL(q(z) || p(z)) per trial, and the KL of each "
        "latent dimension for the Pareto-front trials.",
        "No finished trial yet: no rate split.")
    add(plots.learning_curves(sf.trials, out / "learning_curves.png"),
        "Learning curves (validation), coloured by beta; stopped trials dashed, failed or "
        "diverged ones end in a red cross.", "No trial has reported an epoch yet.")
    _search_figure(sf, out, add, notes)
    _model_figures(sf, best, front, out, figures, notes)

    seconds = time.perf_counter() - started
    summary = _summary(sf, best, front, notes, seconds)
    atomic_write_text(out / "summary.md", summary)
    atomic_write_text(out / "index.html", _html(sf, best, front, figures, notes, seconds))
    return out


def _search_figure(sf: StudyFolder, out: Path, add: Any, notes: list[str]) -> None:
    db = sf.folder / "optuna.db"
    if not db.is_file():
        notes.append("No optuna.db in the study folder: no search history.")
        return
    from .search import load_optuna_study

    try:
        study = load_optuna_study(sf.folder, sf.study.name)
    except Exception as exc:
        notes.append(f"The Optuna study could not be read ({exc}): no search history.")
        return
    obj = sf.study.search.objectives[0].metric
    add(plots.search_history(study, obj, out / "search.png"),
        f"The search: Optuna's history of {obj} and the importance of each parameter.",
        "Fewer than two finished Optuna trials: no search history yet.")


def _model_figures(sf: StudyFolder, best: Trial | None, front: list[Trial], out: Path,
                   figures: list[tuple[str, str]], notes: list[str]) -> None:
    chosen: list[tuple[Trial, str]] = []
    if best is not None:
        chosen.append((best, "best trial"))
    for t in _spread(front, MAX_MODEL_FIGURES - len(chosen)):
        if all(t.trial_id != c.trial_id for c, _ in chosen):
            chosen.append((t, "Pareto front"))
    if not chosen:
        return
    from .checkpoint import load
    from .config import run_config_from_dict
    from .data import load_datasets
    from .errors import VaeStudyError
    from .model import VAE

    try:
        data = load_datasets(sf.study.base.data, dequantize=sf.study.base.dequantized)
    except VaeStudyError as exc:
        notes.append(f"Model pictures skipped: the test data cannot be read ({exc}).")
        return
    for trial, why in sorted(chosen, key=lambda c: c[0].beta):
        if trial.checkpoint is None:
            notes.append(f"Trial {trial.trial_id}: no checkpoint left, its pictures are "
                         "skipped.")
            continue
        try:
            state = load(trial.checkpoint)
            cfg = run_config_from_dict(state.config)
            model = VAE(cfg.model)
            model.load_state_dict(state.model)
        except (VaeStudyError, RuntimeError, KeyError) as exc:
            notes.append(f"Trial {trial.trial_id}: its checkpoint cannot be used ({exc}); "
                         "pictures skipped.")
            continue
        name = model_figure_name(trial.trial_id)
        title = (f"Trial {trial.trial_id} ({why}): beta {trial.beta:.3g}, latent size "
                 f"{trial.latent_dim}, K {trial.k}, test -ELBO "
                 f"{trial.value(M.TEST_NEG_ELBO):.1f} = R {trial.value(M.TEST_RATE):.1f} + "
                 f"D {trial.value(M.TEST_DISTORTION):.1f} nats")
        plots.model_pictures(trial, model, data.test.x, data.test.labels, out / name, title)
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


def _trial_line(t: Trial, keys: list[str]) -> list[str]:
    return [t.trial_id, t.status, *[_fmt(t.params.get(k, "")) for k in keys],
            *[_fmt(t.value(m)) for m in (M.TEST_RATE, M.TEST_DISTORTION, M.TEST_NEG_ELBO,
                                         M.TEST_NLL, M.TEST_ACTIVE_UNITS)]]


def _table_md(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md, r)) + " |" for r in rows]
    return "\n".join(lines)


def _summary(sf: StudyFolder, best: Trial | None, front: list[Trial], notes: list[str],
             seconds: float) -> str:
    keys = [p.key for p in sf.study.search.space]
    head = ["trial", "status", *keys, "rate", "distortion", "-ELBO", "NLL", "active units"]
    counts: dict[str, int] = {}
    for t in sf.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in sf.study.search.objectives)
    parts = [
        f"# Study {sf.study.name}",
        "",
        f"- folder: {_code(sf.folder)}",
        f"- trials: {len(sf.trials)} of {sf.study.search.num_trials} ("
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet") + ")",
        f"- searched: {', '.join(keys)}; objectives: {objectives}; "
        f"algorithm {sf.study.search.algorithm}",
        "- all numbers are nats per test example",
        "",
    ]
    if best is not None:
        parts += ["## Best trial", "", _table_md([_trial_line(best, keys)], head), ""]
    if front:
        parts += ["## Rate-distortion Pareto front", "",
                  _table_md([_trial_line(t, keys) for t in front], head), ""]
    bad = [t for t in sf.trials if t.status == R.FAILED]
    if bad:
        parts += ["## Failed trials (diverged or crashed)", ""]
        parts += [f"- {_md(t.trial_id)} ({_md(t.status)}): "
                  f"{_md(t.metrics.get(R.ERROR_KEY) or 'no message')}" for t in bad]
        parts.append("")
    if notes:
        parts += ["## Notes", ""] + [f"- {_md(n)}" for n in notes] + [""]
    parts.append(f"Report built in {seconds:.1f} s.")
    return "\n".join(parts) + "\n"


def _html(sf: StudyFolder, best: Trial | None, front: list[Trial],
          figures: list[tuple[str, str]], notes: list[str], seconds: float) -> str:
    esc = html.escape
    keys = [p.key for p in sf.study.search.space]
    head = ["trial", "status", *keys, "rate", "distortion", "-ELBO", "NLL", "active units"]

    def table(trials: list[Trial]) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _trial_line(t, keys))
                       + "</tr>" for t in trials)
        return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
                + rows + "</table>")

    body = [f"<h1>Study {esc(sf.study.name)}</h1>",
            f"<p>{len(sf.trials)} of {sf.study.search.num_trials} trials; nats per test "
            f"example. Files: <a href=\"{R.RESULTS_FILE}\">{R.RESULTS_FILE}</a>, "
            "<a href=\"summary.md\">summary.md</a>.</p>"]
    if best is not None:
        body += ["<h2>Best trial</h2>", table([best])]
    if front:
        body += ["<h2>Rate-distortion Pareto front</h2>", table(front)]
    for name, caption in figures:
        body.append(f"<figure><img src=\"{esc(name)}\" alt=\"{esc(caption)}\">"
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    body += ["<h2>All trials</h2>", table(sf.trials)]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    body.append(f"<p class=\"small\">Report built in {seconds:.1f} s by vae_study.</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
             "img{max-width:100%}figure{margin:2em 0}figcaption{color:#444}"
             ".small{color:#777;font-size:12px}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>vae_study report: {esc(sf.study.name)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
