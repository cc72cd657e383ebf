"""A study's configurations as the report sees them: each one's members (results.csv rows)
grouped into one ``Trial`` with the means and standard errors over its replicates, and the
Pareto front of those means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vae_study import metrics as M
from vae_study.config.study import StudyConfig
from vae_study.records.layout import COMPLETED, FAILED, INTERRUPTED
from vae_study.records.pareto import pareto_front
from vae_study.records.replicates import (
    CONFIG_KEY,
    N_FINISHED_KEY,
    N_REPLICATES_KEY,
    REPLICATE_KEY,
    aggregate,
    se_key,
)
from vae_study.records.results import ROW_METRICS
from vae_study.records.trial import Trial


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# The numbers a configuration averages over its replicates: every scalar of a results row.
AGGREGATED = tuple(m for m in ROW_METRICS if m != M.TEST_KL_PER_DIM)


def configurations(
    trials: list[Trial],
    study: StudyConfig,
    *,
    replicates: int,
    objectives: Sequence[tuple[str, str]] = (),
) -> list[Trial]:
    """One Trial per configuration from its members (results.csv rows grouped by config_id;
    by trial_id in a table without that column, one member each), with the means and
    standard errors of ``replicates.aggregate``; ``pareto`` set on the front of the means
    of ``objectives`` among completed configurations. The configuration's history,
    checkpoint and per-dimension KL are its lowest replicate's (replicate 0 when it is
    there): the model pictures show one member, not an average of weights."""
    groups: dict[Any, list[Trial]] = {}
    for t in trials:
        cid = t.metrics.get(CONFIG_KEY)
        key = ("config", int(float(cid))) if _present(cid) else ("trial", t.trial_id)
        groups.setdefault(key, []).append(t)
    param_keys = [p.key for p in study.search.space]
    out = []
    for (kind, ident), members in groups.items():
        (agg,) = aggregate(
            [{**m.metrics, "trial_id": m.trial_id, "status": m.status} for m in members],
            param_keys=param_keys,
            metrics=list(AGGREGATED),
            replicates=max(replicates, len(members)),  # a table of more seeds than said
        )

        def order(m: Trial) -> tuple[bool, float]:
            r = m.value(REPLICATE_KEY)
            return (not m.finished, r if math.isfinite(r) else 0.0)

        members = sorted(members, key=order)
        first = members[0]
        failed = [m for m in members if m.status == FAILED]
        shown = failed[0] if agg.get("status") == FAILED and failed else first
        metrics = dict(shown.metrics)
        if agg["status"] in (COMPLETED, FAILED) or agg[N_FINISHED_KEY] > 0:
            # The means over all its seeds; none for a configuration short of one (failed,
            # or some seeds finished and others not): never the survivors' mean.
            metrics.update({m: agg.get(m) for m in AGGREGATED})
        # else (no seed finished): the member's own numbers, a stopped or running trial's last
        metrics[M.TEST_KL_PER_DIM] = first.metrics.get(M.TEST_KL_PER_DIM)
        status = str(agg["status"])
        if kind == "trial":  # a row of its own (a table without config_id): its own word
            status = first.status
        elif status not in (FAILED, COMPLETED) and any(m.status == INTERRUPTED for m in members):
            status = INTERRUPTED  # paused with the study: the next run resumes it
        out.append(
            Trial(
                trial_id=str(ident) if kind == "config" else first.trial_id,
                status=status,
                params=first.params,
                metrics=metrics,
                history=first.history,
                checkpoint=first.checkpoint,
                pareto=first.pareto if kind == "trial" and not objectives else False,
                se={m: agg.get(se_key(m)) for m in AGGREGATED},
                n_seeds=int(agg[N_FINISHED_KEY]),
                n_replicates=int(agg[N_REPLICATES_KEY]),
                members=members,
            )
        )
    if objectives:
        done = [i for i, c in enumerate(out) if c.finished]
        points = [[out[i].value(m) for m, _ in objectives] for i in done]
        for j in pareto_front(points, [mode for _, mode in objectives]):
            out[done[j]].pareto = True
    return out
