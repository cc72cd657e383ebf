"""The loaders read real file formats written here: IDX (both layouts) and .amat."""

from __future__ import annotations

import gzip

import pytest
import torch

from conftest import tiny_images, write_amat, write_mnist
from vae_study.config import DataConfig
from vae_study.data import Batches, load_datasets, read_amat, resolve_root
from vae_study.errors import DataError


def test_flat_gz_layout_reads_through_torchvision_with_pixels_scaled(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=300, n_test=100)
    d = load_datasets(DataConfig(root=str(root), val_size=50))
    assert (len(d.train), len(d.val), len(d.test)) == (250, 50, 100)
    expected_test = torch.from_numpy(tiny_images(100, 1)).reshape(100, 784).float() / 255
    assert torch.equal(d.test.x, expected_test)
    assert d.train.x.dtype == torch.float32 and d.train.x.shape[1] == 784
    assert d.train.labels is not None and d.train.labels.shape == (250,)


def test_val_split_is_disjoint_fixed_and_independent_of_the_seed(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=200)
    a = load_datasets(DataConfig(root=str(root), val_size=40), seed=1)
    b = load_datasets(DataConfig(root=str(root), val_size=40), seed=2)
    assert torch.equal(a.val.x, b.val.x)
    full = torch.from_numpy(tiny_images(200, 0)).reshape(200, 784).float() / 255
    rows = {tuple(r.tolist()) for r in full}
    train_rows = {tuple(r.tolist()) for r in a.train.x}
    val_rows = {tuple(r.tolist()) for r in a.val.x}
    assert train_rows | val_rows <= rows and not (train_rows & val_rows)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_torchvision_layout_is_read_as_is(tmp_path, dataset):
    root = write_mnist(tmp_path / "d", layout="torchvision", dataset=dataset, n_train=120)
    d = load_datasets(DataConfig(dataset=dataset, root=str(root), val_size=20))
    assert len(d.train) == 100 and len(d.test) == 100


def test_root_falls_back_to_env_then_cache(tmp_path, monkeypatch):
    assert resolve_root("/x/y") == resolve_root("/x/y")
    monkeypatch.setenv("VAE_STUDY_DATA", str(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("VAE_STUDY_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_root(None) == tmp_path / "cache" / "vae_study" / "data"
    write_mnist(tmp_path / "env", n_train=80)
    monkeypatch.setenv("VAE_STUDY_DATA", str(tmp_path / "env"))
    assert len(load_datasets(DataConfig(val_size=10)).train) == 70


def test_missing_dataset_names_every_path_tried_and_the_fix(tmp_path, monkeypatch):
    # Make torchvision's download fail fast and offline, as it does on this machine.
    import torchvision.datasets.mnist as tvm

    monkeypatch.setattr(tvm.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_datasets(DataConfig(root=str(root)))
    msg = str(err.value)
    assert "mnist" in msg and "download failed" in msg
    assert str(root / "MNIST" / "raw") in msg and str(root / "mnist") in msg
    assert "VAE_STUDY_DATA" in msg and "data.root" in msg


def test_corrupt_idx_file_is_a_data_error(tmp_path):
    root = write_mnist(tmp_path / "d")
    gz = root / "mnist" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])  # truncated download
    with pytest.raises(DataError, match="damaged"):
        load_datasets(DataConfig(root=str(root)))


def test_amat_reader_plain_and_gz_and_official_splits(tmp_path):
    root = write_amat(tmp_path / "d", n=(200, 60, 60))
    d = load_datasets(DataConfig(dataset="binarized_mnist", root=str(root), val_size=60))
    assert (len(d.train), len(d.val), len(d.test)) == (200, 60, 60)
    assert set(d.train.x.unique().tolist()) == {0.0, 1.0}
    expected = (torch.from_numpy(tiny_images(60, 2)) > 127).float().reshape(60, 784)
    assert torch.equal(d.test.x, expected)
    plain = write_amat(tmp_path / "p", n=(5, 5, 5), gz=False)
    assert read_amat(plain / "binarized_mnist" / "binarized_mnist_test.amat").shape == (5, 784)


def test_amat_with_a_short_line_is_refused(tmp_path):
    bad = tmp_path / "binarized_mnist_test.amat"
    bad.write_text("0 1 0\n")
    with pytest.raises(DataError, match="784"):
        read_amat(bad)
    worse = tmp_path / "x.amat.gz"
    worse.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="damaged"):
        read_amat(worse)


def test_binarize_static_is_fixed_by_the_seed_and_dynamic_redraws(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=100)
    cfg = DataConfig(root=str(root), val_size=10, binarize="static")
    a, b = load_datasets(cfg, seed=3), load_datasets(cfg, seed=3)
    c = load_datasets(cfg, seed=4)
    assert set(a.train.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)

    dyn = load_datasets(DataConfig(root=str(root), val_size=10, binarize="dynamic"))
    assert dyn.dynamic and dyn.train.x.unique().numel() > 2  # grey levels kept
    g = torch.Generator().manual_seed(0)
    batches = Batches(dyn.train, 90, shuffle=False, dynamic=True, generator=g)
    first, second = next(iter(batches)), next(iter(batches))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # a fresh draw each time an example is used
    # E[bernoulli(p)] = p: the mean of many draws approaches the grey levels.
    draws = torch.stack([next(iter(batches)) for _ in range(400)]).mean(0)
    assert (draws - dyn.train.x[:90]).abs().mean() < 0.03


def test_train_subset_takes_the_first_examples_and_checks_its_size(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=100)
    full = load_datasets(DataConfig(root=str(root), val_size=10))
    sub = load_datasets(DataConfig(root=str(root), val_size=10, train_subset=25))
    assert torch.equal(sub.train.x, full.train.x[:25])
    with pytest.raises(DataError, match="train_subset"):
        load_datasets(DataConfig(root=str(root), val_size=10, train_subset=500))


def test_batches_cover_each_example_once_per_epoch_in_a_seeded_order():
    from vae_study.data import Split

    x = torch.arange(10.0).unsqueeze(1).expand(10, 784).contiguous()
    split = Split(x, None)
    order = lambda seed: torch.cat([b[:, 0] for b in Batches(  # noqa: E731
        split, 4, shuffle=True, dynamic=False, generator=torch.Generator().manual_seed(seed))])
    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert len(Batches(split, 4, shuffle=True, dynamic=False)) == 3


def test_gz_amat_reader_handles_windows_line_endings(tmp_path):
    path = tmp_path / "w.amat.gz"
    with gzip.open(path, "wt") as f:
        f.write(("0 " * 783 + "1\r\n") * 3)
    x = read_amat(path)
    assert x.shape == (3, 784) and x[:, -1].sum() == 3
