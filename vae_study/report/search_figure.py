"""The search figure of a report (Figure 6): Optuna's optimisation history of the first
objective and the importance of each searched parameter, read from the study's optuna.db."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vae_study.records.folder import StudyFolder
from vae_study.records.layout import StudyLayout
from vae_study.report import figure_files


def search_figure(
    sf: StudyFolder,
    out: Path,
    add: Callable[[Path | None, str, str], None],
    notes: list[str],
) -> None:
    """Draw ``search.png`` into ``out`` and hand it to ``add(path, caption, note when there
    is none)``; a study without a readable optuna.db gets a note in ``notes`` instead."""
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
        search_history(study, obj, out / "search.png"),
        f"The search: Optuna's history of {obj} and the importance of each parameter.",
        "Fewer than two finished Optuna trials: no search history yet.",
    )


def search_history(optuna_study: Any, objective: str, path: Path) -> Path | None:
    """Figure 6: Optuna's optimisation history and parameter importance."""
    import optuna

    done = [t for t in optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return None
    multi = len(optuna_study.directions) > 1
    fig = Figure(figsize=(14, 5))
    (ax1, ax2) = fig.subplots(1, 2)
    numbers = [t.number for t in done]
    values = [t.values[0] for t in done]
    ax1.plot(numbers, values, "o", label=objective)
    if not multi:
        best = (
            np.minimum.accumulate(values)
            if optuna_study.direction.name == "MINIMIZE"
            else np.maximum.accumulate(values)
        )
        ax1.plot(numbers, best, "-", color="crimson", label="best so far")
    ax1.set_xlabel("Optuna trial number")
    ax1.set_ylabel(f"{objective} [nats]")
    ax1.set_title("Search history" + (" (first objective)" if multi else ""))
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    try:
        target = (lambda t: t.values[0]) if multi else None
        imp = optuna.importance.get_param_importances(optuna_study, target=target)
    except Exception as exc:  # too few trials, a single parameter value, ...
        imp = {}
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ax2.text(
            0.5,
            0.5,
            f"parameter importance unavailable:\n{reason}",
            ha="center",
            va="center",
            transform=ax2.transAxes,
            wrap=True,
            color="grey",
        )
    if imp:
        names = list(imp)[::-1]
        ax2.barh(names, [imp[n] for n in names])
        ax2.set_xlabel(f"importance for {objective} (fANOVA)")
    ax2.set_title("Parameter importance")
    fig.tight_layout()
    return figure_files.save_figure(fig, path)
