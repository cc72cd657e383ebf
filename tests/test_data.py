"""The loaders read real file formats written here: IDX (both layouts) and .amat."""

from __future__ import annotations

import gzip

import pytest
import torch

from conftest import tiny_images, write_amat, write_mnist
from vae_study.config.data import DataConfig
from vae_study.core.batches import NOISE_BERNOULLI, NOISE_UNIFORM, Batches, dynamic_binarize
from vae_study.core.data import load_datasets
from vae_study.core.data_root import resolve_root
from vae_study.core.public_datasets import read_amat
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
    a = load_datasets(DataConfig(root=str(root), val_size=40))
    b = load_datasets(DataConfig(root=str(root), val_size=40, train_subset=20))
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


def test_dynamic_binarization_redraws_training_batches_only(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=100)
    dyn = load_datasets(DataConfig(root=str(root), val_size=10, binarize="dynamic"))
    assert dyn.train_noise == NOISE_BERNOULLI and dyn.train.x.unique().numel() > 2  # grey
    for split in (dyn.val, dyn.test):  # evaluation data: one fixed draw, binary
        assert set(split.x.unique().tolist()) == {0.0, 1.0}
    g = torch.Generator().manual_seed(0)
    batches = Batches(dyn.train, 90, shuffle=False, noise=NOISE_BERNOULLI, generator=g)
    first, second = next(iter(batches)), next(iter(batches))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # a fresh draw each time an example is used
    # E[bernoulli(p)] = p: the mean of many draws approaches the grey levels.
    draws = torch.stack([next(iter(batches)) for _ in range(400)]).mean(0)
    assert (draws - dyn.train.x[:90]).abs().mean() < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape", [(128, 784), (37, 784), (3, 5, 7), (1,), (0, 784), "transposed", "strided"]
)
def test_the_cpu_binarization_is_torch_bernoulli_bit_for_bit(shape, dtype):
    """dynamic_binarize draws rand < x on the CPU: the same values as torch.bernoulli on the
    same generator, and the generator left in the same state (the next draw agrees too), so
    runs, checkpoints and the seed anchor are unchanged. Grey levels include 0, 1 and values
    a float's 24 random bits sit next to."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand((40, 30) if isinstance(shape, str) else shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    edges = torch.tensor([0.0, 1.0, 2.0**-24, 1 - 2.0**-24, 0.5], dtype=dtype)
    flat[: min(5, flat.numel())] = edges[: min(5, flat.numel())]
    if shape == "transposed":  # views of other layouts
        x = x.t()
    elif shape == "strided":
        x = x[:, ::3]
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        got, want = dynamic_binarize(x, ours), torch.bernoulli(x, generator=theirs)
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        assert torch.equal(got, want)
    assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize(
    "binarize, dequantize", [("static", False), ("dynamic", False), ("none", True), ("none", False)]
)
def test_evaluation_data_is_the_same_whatever_a_study_varies(tmp_path, binarize, dequantize):
    """The test tensors are equal across seeds, train_subset and val_size; the validation
    tensors across seeds and train_subset. The seed cannot matter: load_datasets does not
    take one, and fit's training seed is not passed to it (checked below through fit)."""
    root = write_mnist(tmp_path / "d", n_train=300, n_test=80)

    def load(**keys):
        return load_datasets(
            DataConfig(root=str(root), binarize=binarize, **{"val_size": 50, **keys}),
            dequantize=dequantize,
        )

    base = load()
    for other in (
        load(train_subset=20),
        load(val_size=120),
        load(val_size=0),
        load(train_subset=7, val_size=31),
    ):
        assert torch.equal(other.test.x, base.test.x)
    for other in (load(train_subset=20), load(train_subset=200)):
        assert torch.equal(other.val.x, base.val.x)
    if binarize != "none" or dequantize:  # drawn, not the stored grey levels
        grey = load_datasets(DataConfig(root=str(root), val_size=50))
        assert not torch.equal(base.test.x, grey.test.x)
        assert not torch.equal(base.val.x, grey.val.x)
    if binarize == "static":  # the static training draw: fixed, and the same per example
        sub = load(train_subset=20)
        assert torch.equal(sub.train.x, base.train.x[:20])
        assert set(base.train.x.unique().tolist()) == {0.0, 1.0}


def test_fit_scores_every_seed_on_the_same_test_tensors(tmp_path, monkeypatch):
    import vae_study.core.train as T
    from vae_study.config.run import RunConfig, replace_keys

    root = write_mnist(tmp_path / "d", n_train=200, n_test=60)
    seen = []
    real = T.evaluate_test
    monkeypatch.setattr(
        T,
        "evaluate_test",
        lambda model, x, *a, **k: seen.append(x.clone()) or real(model, x, *a, **k),
    )
    for seed, subset in ((0, None), (1, 50), (2**32 - 1, 120)):
        T.fit(
            replace_keys(
                RunConfig(),
                {
                    "data.root": str(root),
                    "data.val_size": 40,
                    "data.binarize": "dynamic",
                    "data.train_subset": subset,
                    "train.seed": seed,
                    "train.epochs": 1,
                    "model.hidden": [16],
                    "model.latent_dim": 2,
                    "train.device": "cpu",
                    "eval.k": 2,
                    "eval.val_k": 2,
                    "eval.val_examples": 10,
                    "eval.surgery_examples": 10,
                },
            )
        )
    assert len(seen) == 3 and all(torch.equal(x, seen[0]) for x in seen)


def test_dequantised_pixels_stay_in_their_bins(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=100, n_test=40)
    grey = load_datasets(DataConfig(root=str(root), val_size=10))
    deq = load_datasets(DataConfig(root=str(root), val_size=10), dequantize=True)
    assert deq.train_noise == NOISE_UNIFORM
    pixel = (grey.test.x * 255).round()
    # (pixel + u) / 256 with u in [0, 1): inside the pixel's own bin, and not at its corner.
    assert ((deq.test.x * 256 - pixel) >= 0).all() and ((deq.test.x * 256 - pixel) < 1).all()
    assert (deq.test.x * 256 - pixel).std() > 0.2  # uniform noise has std 0.29
    batch = next(
        iter(
            Batches(
                deq.train,
                50,
                shuffle=False,
                noise=NOISE_UNIFORM,
                generator=torch.Generator().manual_seed(0),
            )
        )
    )
    offset = batch * 256 - (deq.train.x[:50] * 255).round()
    assert (offset >= 0).all() and (offset < 1).all()
    with pytest.raises(DataError, match="grey levels"):
        load_datasets(DataConfig(root=str(root), val_size=10, binarize="static"), dequantize=True)


def test_train_subset_takes_the_first_examples_and_checks_its_size(tmp_path):
    root = write_mnist(tmp_path / "d", n_train=100)
    full = load_datasets(DataConfig(root=str(root), val_size=10))
    sub = load_datasets(DataConfig(root=str(root), val_size=10, train_subset=25))
    assert torch.equal(sub.train.x, full.train.x[:25])
    with pytest.raises(DataError, match="train_subset"):
        load_datasets(DataConfig(root=str(root), val_size=10, train_subset=500))


def test_batches_cover_each_example_once_per_epoch_in_a_seeded_order():
    from vae_study.core.splits import Split

    x = torch.arange(10.0).unsqueeze(1).expand(10, 784).contiguous()
    split = Split(x, None)

    def order(seed):
        return torch.cat(
            [
                b[:, 0]
                for b in Batches(
                    split, 4, shuffle=True, generator=torch.Generator().manual_seed(seed)
                )
            ]
        )

    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert len(Batches(split, 4, shuffle=True)) == 3


def test_gz_amat_reader_handles_windows_line_endings(tmp_path):
    path = tmp_path / "w.amat.gz"
    with gzip.open(path, "wt") as f:
        f.write(("0 " * 783 + "1\r\n") * 3)
    x = read_amat(path)
    assert x.shape == (3, 784) and x[:, -1].sum() == 3


def _reference_prepare(source, cfg, dequantize):
    """What prepare presents, by its definition: each split drawn whole by its stream, then
    indexed (the pieces and the rows kept are prepare's business). Returns the (x, labels)
    of train, val and test, and the training noise."""
    from vae_study.core import data as D

    draw = D.uniform_dequantize if dequantize else D.dynamic_binarize
    drawn = dequantize or cfg.binarize != "none"

    def floats(x):
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    def whole(split, seed, redraw=drawn):
        x = floats(split.x)
        return draw(x, generator=torch.Generator().manual_seed(seed)) if redraw else x

    train_labels = source.train.labels
    if source.valid is not None:
        redraw = drawn and source.pixels != D.PIXELS_BINARY
        val = whole(source.valid, D.VAL_DRAW_SEED, redraw)[: cfg.val_size]
        val_labels = source.valid.labels[: cfg.val_size]
        pool = whole(source.train, D.TRAIN_POOL_DRAW_SEED, redraw)
        stored = floats(source.train.x)
        test = whole(source.test, D.TEST_DRAW_SEED, redraw)
    else:
        train_idx, val_idx = D._hold_out_index(len(source.train), cfg.val_size)
        pool = whole(source.train, D.TRAIN_POOL_DRAW_SEED)
        val, pool = pool[val_idx], pool[train_idx]
        val_labels, train_labels = train_labels[val_idx], train_labels[train_idx]
        stored = floats(source.train.x)[train_idx]
        test = whole(source.test, D.TEST_DRAW_SEED)
    fresh = dequantize or cfg.binarize == "dynamic"
    train = stored if fresh else pool
    if cfg.train_subset is not None:
        train, train_labels = train[: cfg.train_subset], train_labels[: cfg.train_subset]
    noise = "uniform" if dequantize else "bernoulli" if fresh else "none"
    splits = ((train, train_labels), (val, val_labels), (test, source.test.labels))
    return splits, noise


@pytest.mark.parametrize("own_valid", [False, True])
@pytest.mark.parametrize(
    "binarize, dequantize, pixels",
    [
        ("dynamic", False, "8-bit"),
        ("static", False, "8-bit"),
        ("none", True, "8-bit"),
        ("none", False, "8-bit"),
        ("dynamic", False, "binary"),
        ("static", False, "binary"),
        ("dynamic", False, "continuous"),
        ("static", False, "continuous"),
    ],
)
def test_prepare_draws_in_pieces_what_one_whole_draw_gives(
    monkeypatch, own_valid, binarize, dequantize, pixels
):
    """prepare draws a split a few rows at a time and keeps only the rows it presents: the
    same tensors (values, labels, dtype) and noise as drawing each split whole and indexing
    it."""
    from vae_study.core import data as D
    from vae_study.core.splits import Source, Split

    monkeypatch.setattr(D, "DRAW_ROWS", 7)  # many pieces, the last one short
    g = torch.Generator().manual_seed(9)

    def split(n):
        x = torch.randint(0, 256, (n, 784), generator=g, dtype=torch.uint8)
        if pixels == "binary":
            x = (x > 127).float()
        elif pixels == "continuous":  # floats in [0, 1], not k/255, in double precision
            x = torch.rand(n, 784, generator=g, dtype=torch.float64)
        return Split(x, torch.randint(0, 10, (n,), generator=g))

    source = Source(split(60), split(25), split(40) if own_valid else None, pixels=pixels)
    for val_size, subset in ((13, None), (0, 9), (30, 20)):
        cfg = DataConfig(binarize=binarize, val_size=val_size, train_subset=subset)
        got = D.prepare(source, cfg, dequantize=dequantize)
        want, noise = _reference_prepare(source, cfg, dequantize)
        assert got.train_noise == noise
        for mine, (x, labels) in zip((got.train, got.val, got.test), want, strict=True):
            assert mine.x.dtype == x.dtype and torch.equal(mine.x, x)
            assert torch.equal(mine.labels, labels)
        assert len(got.val) == val_size
        if pixels != "binary" and (binarize != "none" or dequantize):  # really drawn
            stored = source.test.x.float() / 255 if pixels == "8-bit" else source.test.x
            assert not torch.equal(got.test.x, stored)


def test_drawing_chosen_rows_refuses_rows_out_of_order():
    from vae_study.core.data import _drawn
    from vae_study.core.splits import Split

    split = Split(torch.rand(10, 4), None)
    assert torch.equal(
        _drawn(split, dynamic_binarize, 1, rows=torch.tensor([2, 7])).x,
        _drawn(split, dynamic_binarize, 1).x[[2, 7]],
    )
    with pytest.raises(ValueError, match="ascending"):
        _drawn(split, dynamic_binarize, 1, rows=torch.tensor([7, 2]))
