"""Which configurations a study's confirmation stage retrains, and how that is said.

Pure functions of the study file and the per-configuration rows (``configs.csv``): the
study layer runs the stage (``study.confirm``), the report only describes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vae_study.config.objectives import Objective
from vae_study.config.study import StudyConfig
from vae_study.records.layout import COMPLETED, as_number
from vae_study.records.pareto import pareto_front, spread
from vae_study.records.replicates import CONFIG_KEY


def search_replicates(study: StudyConfig) -> int:
    """The search's seeds per configuration (``search.replicates``)."""
    return int(study.search.replicates)


def select_configurations(
    configs: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], top: int
) -> list[Mapping[str, Any]]:
    """The ``top`` configurations to confirm, from per-configuration rows (``CONFIG_KEY``,
    ``status``, each objective's mean over the replicates).

    One objective: the best ``top`` means (ties: the lower configuration id first). Several:
    the configurations on the Pareto front of the means, ``top`` of them spread evenly along
    it by the first objective. Candidates are completed configurations (every replicate
    finished) with a finite mean on every objective."""
    done = [
        c
        for c in configs
        if c.get("status") == COMPLETED
        and all(math.isfinite(as_number(c.get(o.metric))) for o in objectives)
    ]

    def key(c: Mapping[str, Any], o: Objective) -> tuple[float, str]:
        sign = 1.0 if o.mode == "min" else -1.0
        cid = c[CONFIG_KEY]  # an int; "trial:<id>" in a table written before config ids
        return (
            sign * as_number(c.get(o.metric)),
            f"{cid:012d}" if isinstance(cid, int) else str(cid),
        )

    if len(objectives) == 1:
        return sorted(done, key=lambda c: key(c, objectives[0]))[:top]
    front = pareto_front(
        [[as_number(c.get(o.metric)) for o in objectives] for c in done],
        [o.mode for o in objectives],
    )
    return spread(sorted((done[i] for i in front), key=lambda c: key(c, objectives[0])), top)


def how_confirmed(study: StudyConfig) -> str:
    """How the confirmed configurations were chosen, in words."""
    confirm = study.search.confirm
    assert confirm is not None
    metrics = ", ".join(o.metric for o in study.search.objectives)
    seeds = search_replicates(study)
    how = (
        f"the {confirm.top} best on {metrics}"
        if not study.search.multi_objective
        else f"{confirm.top} spread along the Pareto front of {metrics}"
    )
    return (
        f"{how} (configuration means), selected on validation over {seeds} "
        f"seed{'s' if seeds > 1 else ''}, confirmed with {confirm.replicates} fresh seeds"
    )
