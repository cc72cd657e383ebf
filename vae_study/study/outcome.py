"""How a stage of a study ended, from its rows: the one-line summary the driver prints and
the failure of a stage whose every configuration failed."""

from __future__ import annotations

from typing import Any

from vae_study.config.study import StudyConfig
from vae_study.errors import StudyFailed
from vae_study.records import results as R
from vae_study.records.layout import COMPLETED, FAILED, INTERRUPTED, PENDING, STOPPED
from vae_study.records.replicates import CONFIG_KEY, aggregate
from vae_study.records.stage import Stage


def all_finished(rows: list[dict[str, Any]]) -> bool:
    """Whether every member of the rows has finished (completed, stopped or failed)."""
    return bool(rows) and all(r.get("status") in (COMPLETED, STOPPED, FAILED) for r in rows)


def summary_line(
    study: StudyConfig, stage: Stage, rows: list[dict[str, Any]], *, paused: bool
) -> str:
    """Where a stage stands, in configurations (each with its replicates); the counts add up
    to its total: finished (completed, stopped, failed) + interrupted + pending."""
    configs = aggregate(rows, param_keys=[], metrics=[], replicates=stage.replicates)
    interrupted = {
        r[CONFIG_KEY] for r in rows if r.get("status") == INTERRUPTED and CONFIG_KEY in r
    }
    status = [
        INTERRUPTED
        if c[CONFIG_KEY] in interrupted and c["status"] not in (FAILED, COMPLETED)
        else c["status"]
        for c in configs
    ]
    total = len(configs) if stage.is_confirmation else study.search.num_trials
    done = {s: status.count(s) for s in (COMPLETED, STOPPED, FAILED)}
    finished = sum(done.values())
    n_interrupted = status.count(INTERRUPTED)
    n_pending = max(0, total - finished - n_interrupted)
    what = "configurations" if stage.replicates > 1 or stage.is_confirmation else "trials"
    head = "paused" if paused else "done"
    name = "confirmation " if stage.is_confirmation else ""
    detail = ", ".join(f"{n} {s}" for s, n in done.items() if n)
    rest = [f"{n} {s}" for s, n in ((INTERRUPTED, n_interrupted), (PENDING, n_pending)) if n]
    return (
        f"vae_study run: {name}{head}: {finished} of {total} {what} finished"
        + (f" ({detail})" if detail else "")
        + (f"; {', '.join(rest)}" if rest else "")
        + f"; results in {stage.layout.results_file}"
    )


def check_not_all_failed(stage: Stage, rows: list[dict[str, Any]]) -> None:
    """A stage that ran to its end with every configuration failed ends the study with
    ``StudyFailed`` (exit status 1), naming the first configuration's error."""
    configs = aggregate(rows, param_keys=[], metrics=[], replicates=stage.replicates)
    if not configs or any(c["status"] != FAILED for c in configs):
        return
    errors = [str(r[R.ERROR_KEY]) for r in rows if r.get(R.ERROR_KEY)]
    first = f"; the first error: {errors[0]}" if errors else ""
    what = "the confirmation's" if stage.is_confirmation else "the study's"
    raise StudyFailed(
        f"all {len(configs)} of {what} configurations failed{first}; "
        f"results in {stage.layout.results_file}"
    )
