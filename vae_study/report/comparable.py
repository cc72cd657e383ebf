"""Whether studies can be compared: each compared study (``Study``), what its test numbers
depend on beyond its models (``evaluation``), the check that refuses studies evaluated
differently, and their grouping into one panel per evaluation. A cross-entropy bound and an
NLL are never on one pair of axes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vae_study import metrics as M
from vae_study.errors import ConfigError
from vae_study.records.folder import StudyFolder
from vae_study.report import paper
from vae_study.report.comparison_figure import StudyStyle

ALLOW_FLAG = "--allow-different-evaluation"  # draws studies evaluated differently apart


@dataclass(frozen=True)
class Study:
    """One compared study: its unique label, the folder read, and how it is drawn."""

    label: str
    folder: StudyFolder
    style: StudyStyle

    @property
    def bound(self) -> str:
        return M.bound_key("test", self.folder.study.base.quantity)


def evaluation(sf: StudyFolder) -> dict[str, str]:
    """What a study's test numbers depend on beyond its models: the dataset (and its file,
    for a researcher's own data), the binarization, the test examples and eval.k of the
    bound, and the quantity the bound is (NLL or cross-entropy). Two studies whose
    evaluations differ report numbers that are not comparable."""
    base = sf.study.base
    d = base.data
    out = {"data.dataset": d.dataset, "data.binarize": d.binarize}
    for key in ("path", "train_dir", "val_dir", "test_dir", "image_size", "channels"):
        value = getattr(d, key)
        if value is not None:
            out[f"data.{key}"] = str(value)
    ev = base.eval
    out["eval.k"] = str(ev.k)
    out["eval.nll_examples"] = "all" if ev.nll_examples is None else str(ev.nll_examples)
    out["quantity"] = paper.quantity_name(base.quantity)
    return out


def evaluation_difference(a: dict[str, str], b: dict[str, str]) -> str:
    """``"eval.k 1000 vs 5000, quantity test NLL vs test cross-entropy bound"``."""
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return ", ".join(f"{k} {a.get(k, 'unset')} vs {b.get(k, 'unset')}" for k in keys)


def check_comparable(studies: Sequence[Study], *, allow_different_evaluation: bool) -> None:
    """Refuse studies evaluated differently: one line naming the first two that differ and
    how; none with ``allow_different_evaluation``."""
    if allow_different_evaluation:
        return
    first = studies[0]
    for other in studies[1:]:
        diff = evaluation_difference(evaluation(first.folder), evaluation(other.folder))
        if diff:
            raise ConfigError(
                f"studies {first.label} and {other.label} are not evaluated alike ({diff}): "
                f"their numbers are not comparable; pass {ALLOW_FLAG} to draw them on "
                "separate panels"
            )


def panels(studies: Sequence[Study]) -> list[tuple[dict[str, str], list[Study]]]:
    """The studies grouped by evaluation, in the order first met: one panel each."""
    out: list[tuple[dict[str, str], list[Study]]] = []
    for s in studies:
        ev = evaluation(s.folder)
        for known, group in out:
            if known == ev:
                group.append(s)
                break
        else:
            out.append((ev, [s]))
    return out
