"""What a report puts first and how it describes it: the selected trial (configuration),
the study's Pareto set and the test R-D front, the words saying how each was chosen and what
the numbers are, and the warnings when its test numbers are optimistic."""

from __future__ import annotations

import math

from vae_study import metrics as M
from vae_study.records.folder import StudyFolder
from vae_study.records.pareto import pareto_front
from vae_study.records.trial import Trial
from vae_study.report.trial_tables import unit


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
        f"Warning: the selected {unit(sf)}'s test numbers are optimistic: it won on "
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


RD_FRONT_WORDS = (
    "Rate-distortion Pareto front on test (rate, distortion): it describes the "
    "test numbers and is not a selection"
)
