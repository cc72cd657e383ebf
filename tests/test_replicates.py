"""The per-configuration table: means and standard errors over seed replicates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vae_study.errors import CheckpointError
from vae_study.records import replicates as RP
from vae_study.records.layout import COMPLETED, FAILED, RUNNING, StudyLayout


def _rows(values: dict[int, list[tuple[str, float | None]]]) -> list[dict]:
    rows = []
    for config, members in values.items():
        for r, (status, nll) in enumerate(members):
            rows.append(
                {
                    "trial_id": f"t{config}",
                    RP.CONFIG_KEY: config,
                    RP.REPLICATE_KEY: r,
                    RP.SEED_KEY: RP.replicate_seed(7, r),
                    "train.beta": 0.5 * (config + 1),
                    "status": status,
                    "val/nll": nll,
                    "val/rate": None if nll is None else nll / 10,
                }
            )
    return rows


def test_replicate_seeds_are_paired_and_confirmation_seeds_are_new() -> None:
    search = [RP.replicate_seed(3, r) for r in range(4)]
    assert search == [3, 4, 5, 6]
    confirm = [RP.replicate_seed(3, r, offset=4) for r in range(3)]
    assert not set(search) & set(confirm)


def test_mean_and_standard_error_agree_with_numpy() -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(90.0, 0.3, size=7)
    mean, se, n = RP.mean_se(list(xs) + [math.nan, None, "x"])
    assert n == 7
    assert mean == pytest.approx(xs.mean(), rel=1e-12)
    assert se == pytest.approx(xs.std(ddof=1) / np.sqrt(7), rel=1e-12)
    assert RP.mean_se([4.0])[1] is None  # absent, not 0
    assert math.isnan(RP.mean_se([])[0])


def test_aggregate_table_per_configuration(tmp_path) -> None:
    rows = _rows(
        {
            0: [(COMPLETED, 90.0), (COMPLETED, 90.4), (COMPLETED, 89.9)],
            1: [(COMPLETED, 95.0), (FAILED, None), (COMPLETED, 94.0)],
            2: [(COMPLETED, 99.0), (RUNNING, None)],
        }
    )
    path = StudyLayout(tmp_path).configs_file
    table = RP.write_configs(
        path, rows, param_keys=["train.beta"], metrics=["val/nll", "val/rate"], replicates=3
    )
    by_id = {r[RP.CONFIG_KEY]: r for r in table}
    a = np.array([90.0, 90.4, 89.9])
    assert by_id[0]["status"] == COMPLETED and by_id[0][RP.N_FINISHED_KEY] == 3
    assert by_id[0]["val/nll"] == pytest.approx(a.mean())
    assert by_id[0][RP.se_key("val/nll")] == pytest.approx(a.std(ddof=1) / np.sqrt(3))
    # A configuration with a diverged seed is failed, and says how many of R finished; it
    # has no mean (its survivors' 94.5 would be a biased number), nor has one still running.
    assert by_id[1]["status"] == FAILED and by_id[1][RP.N_FINISHED_KEY] == 2
    assert by_id[1]["val/nll"] is None and by_id[1][RP.se_key("val/nll")] is None
    assert by_id[2]["status"] == RUNNING and by_id[2][RP.se_key("val/nll")] is None
    assert by_id[2]["val/nll"] is None and by_id[2][RP.N_FINISHED_KEY] == 1
    assert by_id[2]["train.beta"] == 1.5

    frame = RP.read_configs(path)
    assert list(frame[RP.CONFIG_KEY]) == [0, 1, 2]
    assert frame["val/nll_se"].isna().tolist() == [False, True, True]
    assert frame["val/nll"].isna().tolist() == [False, True, True]
    assert "94.5" not in path.read_text()
    assert frame["val/rate"][0] == pytest.approx(a.mean() / 10)


def test_rows_without_config_ids_are_each_their_own_configuration() -> None:
    rows = [
        {"trial_id": "a", "status": COMPLETED, "val/nll": 1.0},
        {"trial_id": "b", "status": COMPLETED, "val/nll": 2.0},
    ]
    table = RP.aggregate(rows, param_keys=[], metrics=["val/nll"], replicates=1)
    assert [t["val/nll"] for t in table] == [1.0, 2.0]
    assert all(t[RP.se_key("val/nll")] is None for t in table)


def test_a_damaged_table_is_refused(tmp_path) -> None:
    path = tmp_path / "configs.csv"
    path.write_text("config_id,status\n0,bogus\n")
    with pytest.raises(CheckpointError, match="unknown status 'bogus'"):
        RP.read_configs(path)
    with pytest.raises(CheckpointError, match="no per-configuration table"):
        RP.read_configs(tmp_path / "none.csv")


def test_a_table_cell_is_a_number_only_when_it_is_one():
    import math

    from vae_study.records.layout import as_number

    assert as_number("1.5") == 1.5 and as_number(2) == 2.0
    # A flag such as diverged=True is not the value 1 of a metric; text and gaps are no number.
    for cell in (True, False, None, "", "nan-ish", [1.0]):
        assert math.isnan(as_number(cell)), cell
