"""The test helpers keep their word: ``fit_once`` trains a configuration once per session and
hands every later test what ``fit`` would have left it."""

from __future__ import annotations

import gzip
import time

import torch

import study_factory as F
from conftest import write_mnist
from vae_study.core import checkpoint as ckpt
from vae_study.core.train import fit


def _timeless(rows):
    """Rows without their timings (seconds differ from one training to the next)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_fit_once_trains_a_configuration_once_and_copies_it_with_its_own_paths(
    tmp_path, monkeypatch
):
    first = write_mnist(tmp_path / "a", n_train=120, n_test=40)
    time.sleep(1.1)  # a gzip header holds the second it was written: other bytes, same data
    second = write_mnist(tmp_path / "b", n_train=120, n_test=40)
    a = F.small_run_config(first, **{"train.epochs": 1, "data.val_size": 20})
    b = F.small_run_config(second, **{"train.epochs": 1, "data.val_size": 20})
    assert F.fit_key(a) == F.fit_key(b)
    assert F.fit_key(a) != F.fit_key(F.small_run_config(first, **{"train.epochs": 2}))

    history_a, final_a = F.fit_once(a, tmp_path / "run_a")
    trained = []
    monkeypatch.setattr(F, "fit", lambda *args, **kw: trained.append(args))
    history_b, final_b = F.fit_once(b, tmp_path / "run_b")
    assert trained == []  # copied, not trained again
    assert (history_b, final_b) == (history_a, final_a)

    # What fit itself leaves for b: the same files, the same checkpoint but for b's paths.
    monkeypatch.undo()
    fresh = fit(b, out_dir=tmp_path / "fresh")
    assert _timeless(history_b) == _timeless(fresh.history)
    assert {k: v for k, v in final_b.items() if k != "time/total_s"} == {
        k: v for k, v in fresh.final.items() if k != "time/total_s"
    }
    names = sorted(p.relative_to(tmp_path / "fresh") for p in (tmp_path / "fresh").rglob("*"))
    assert sorted(p.relative_to(tmp_path / "run_b") for p in (tmp_path / "run_b").rglob("*")) == (
        names
    )
    for name in ("config.yaml", "checkpoint/config.yaml", "vae_study.json"):
        assert (tmp_path / "run_b" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    copied = ckpt.load(tmp_path / "run_b" / "checkpoint")
    made = ckpt.load(tmp_path / "fresh" / "checkpoint")
    assert copied.config == made.config and copied.config["data"]["root"] == str(second)
    assert copied.epoch == made.epoch == 1
    assert list(copied.model) == list(made.model)
    assert all(torch.equal(copied.model[k], made.model[k]) for k in made.model)
    assert torch.equal(copied.generator, made.generator)
    assert _timeless(copied.history) == _timeless(made.history)


def test_the_key_changes_with_the_data(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=60, n_test=20)
    config = F.small_run_config(root)
    key = F.fit_key(config)
    with gzip.open(root / "mnist" / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"other labels")
    assert F.fit_key(config) != key
