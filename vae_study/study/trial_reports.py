"""What a trial reports to Ray Tune: flat scalars (``reportable``); for a pack, each member's
metrics as ``member_<j>/...`` and each configuration's replicate means (``config_summary``),
once per epoch (``PackReports``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_study import metrics as M
from vae_study.errors import TrainingDiverged
from vae_study.records import results as R
from vae_study.run_files import METRICS_FILE

if TYPE_CHECKING:
    from vae_study.core.train import FitResult


class PackReports:
    """The reports of one pack trial, built from ``fit_pack``'s hook (``on_epoch``): one per
    epoch once every live member has finished it, or with members that train one after
    another (``sequential``) one per member epoch; the last when ``fit_pack`` returns
    (``finish``), since a final evaluation may still diverge.

    outs: each member's folder; failed: {member: reason} for members the record holds as
    failed (not trained again, reported diverged); epochs: ``train.epochs``; used: what every
    report carries besides; send(result): delivers a report (to Ray Tune).
    """

    def __init__(
        self,
        outs: Sequence[Path],
        per_config: int,
        epochs: int,
        *,
        failed: dict[int, str],
        sequential: bool,
        used: dict[str, Any],
        send: Callable[[dict[str, Any]], None],
    ) -> None:
        self.outs = list(outs)
        self.per_config = per_config
        self.epochs = epochs
        self.failed = dict(failed)
        self.live = [j for j in range(len(self.outs)) if j not in self.failed]  # fit_pack's
        self.sequential = sequential
        self.used = used
        self.send = send
        self.rows: dict[int, dict[str, Any]] = {}  # member -> its latest row (an epoch, final)
        self.reported = 0  # the last epoch reported

    def on_epoch(self, k: int, row: dict[str, Any], folder: Path | None) -> None:
        """``fit_pack``'s hook: live member k's epoch ``row``; a report when it completes an
        epoch of the pack (the last epoch waits for ``finish``)."""
        j = self.live[k]
        self.rows[j] = row
        epoch = int(row[M.EPOCH])
        if self.sequential:  # one member at a time: every member epoch reported
            self.report(min(int(self.rows[m][M.EPOCH]) if m in self.rows else 0 for m in self.live))
            return
        if epoch >= self.epochs or epoch <= self.reported:
            return  # the last epoch is reported by finish; a lagging member waits
        # Members are called in order; a later one that wrote this epoch will be called too.
        if not any(_last_epoch(self.outs[m]) == epoch for m in self.live[k + 1 :]):
            self.report(epoch)

    def diverged(self, results: Sequence[FitResult | TrainingDiverged]) -> dict[int, str]:
        """Take ``fit_pack``'s results (one per live member): the rows they end with, and
        {member: reason} of those that diverged."""
        out = {}
        for j, res in zip(self.live, results, strict=True):
            if isinstance(res, TrainingDiverged):
                self.failed[j] = out[j] = str(res)
                self.rows.setdefault(j, {M.EPOCH: res.epoch - 1})
            elif res.history:
                self.rows[j] = {**res.history[-1], **res.final}
        return out

    def finish(self) -> None:
        """The last report, once ``diverged`` has taken the results: at the latest epoch."""
        epochs = [int(self.rows[j][M.EPOCH]) for j in self.live if j in self.rows]
        self.report(max([self.reported, *epochs]))

    def report(self, epoch: int) -> None:
        """Send the report of ``epoch``: every member's latest row and each configuration's
        replicate means where all its replicates are at ``epoch``."""
        n_configs = len(self.outs) // self.per_config
        result = {M.EPOCH: epoch, **self.used}
        for j in range(len(self.outs)):
            row = self.rows.get(j)
            if row is not None:
                result.update({R.member_key(j, k): v for k, v in reportable(row).items()})
            if j in self.failed or j not in self.live:
                result[R.member_key(j, R.DIVERGED_KEY)] = 1
                if j in self.failed:
                    result[R.member_key(j, R.ERROR_KEY)] = self.failed[j]
        for i in range(n_configs):
            group = range(i * self.per_config, (i + 1) * self.per_config)
            summary: dict[str, Any] = {}  # no mean while a replicate is not at this epoch
            if not any(self._off_epoch(j, epoch) for j in group):
                summary = config_summary([R.sub_result(result, R.member_key(j, "")) for j in group])
            if n_configs == 1:
                result.update(summary)
            else:
                result.update({R.config_key(i, k): v for k, v in summary.items()})
        self.reported = epoch
        self.send(result)

    def _off_epoch(self, j: int, epoch: int) -> bool:
        """A live member not at ``epoch``: not trained that far yet, or already past it
        (members that train one after another), or masked after diverging (its reason comes
        when fit_pack returns). A mean over replicates is taken at one epoch only."""
        row = self.rows.get(j)
        live = j in self.live and j not in self.failed
        return live and (row is None or int(row[M.EPOCH]) != epoch)


def config_summary(member_results: list[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's report from its members' (replicates') reports: ``diverged`` and the
    first reason if one diverged (then no metric: the configuration has no objective), else
    the mean of each number every replicate reports (a number they all report alike, such as
    their common epoch, Optuna's step, as it is)."""
    bad = [r for r in member_results if r.get(R.DIVERGED_KEY)]
    if bad:
        reason = next((r[R.ERROR_KEY] for r in bad if r.get(R.ERROR_KEY)), None)
        return {R.DIVERGED_KEY: 1, **({R.ERROR_KEY: reason} if reason else {})}
    out: dict[str, Any] = {}
    for key in member_results[0]:
        values = [r.get(key) for r in member_results]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            same = all(v == values[0] for v in values)
            out[key] = values[0] if same else sum(values) / len(values)
    return out


def reportable(row: dict[str, Any]) -> dict[str, Any]:
    """Ray wants flat scalars; the per-dimension KL list travels as text."""
    out = {}
    for k, v in row.items():
        out[k] = " ".join(f"{x:.5g}" for x in v) if isinstance(v, list) else v
    return out


def _last_epoch(out: Path) -> int:
    """The last epoch in a member's metrics.jsonl (0: none): written with its checkpoint."""
    try:
        lines = (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        return int(json.loads(lines[-1])[M.EPOCH]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0
