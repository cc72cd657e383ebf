"""A researcher's own data: .npz/.npy files, image folders, CIFAR-10, any image shape."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_study.config.data import DataConfig
from vae_study.config.run import ModelConfig, RunConfig, load_run_config
from vae_study.core.batches import NOISE_BERNOULLI, NOISE_UNIFORM
from vae_study.core.data import load_datasets, prepare, read_source
from vae_study.core.splits import PIXELS_8BIT, PIXELS_BINARY, PIXELS_CONTINUOUS
from vae_study.errors import ConfigError, DataError


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(n, *shape) uint8 images with every level from 0 to 255 somewhere."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def npz_config(path: Path, **keys) -> DataConfig:
    return DataConfig(dataset="npz", path=str(path), **{"val_size": 5, **keys})


# ---------------------------------------------------------------------------------------
# .npz: good files.


def test_npz_uint8_grey_is_read_flat_with_its_shape_and_labels(tmp_path):
    train, test = images(30, (5, 7)), images(12, (5, 7), seed=1)
    path = write_npz(
        tmp_path / "d.npz",
        train=train,
        test=test,
        train_labels=np.arange(30) % 3,
        test_labels=np.arange(12) % 3,
    )
    d = load_datasets(npz_config(path))
    assert d.shape == (1, 5, 7)
    assert (len(d.train), len(d.val), len(d.test)) == (25, 5, 12)
    assert d.test.x.dtype == torch.float32 and d.test.x.shape == (12, 35)
    assert torch.equal(d.test.x, torch.from_numpy(test).reshape(12, 35).float() / 255)
    assert torch.equal(d.test.labels, torch.arange(12) % 3)
    # The train and validation rows are the training images, disjoint, held out as for MNIST.
    rows = {tuple(r) for r in (torch.from_numpy(train).reshape(30, 35).float() / 255).tolist()}
    got_train = {tuple(r) for r in d.train.x.tolist()}
    got_val = {tuple(r) for r in d.val.x.tolist()}
    assert got_train | got_val == rows and not got_train & got_val
    # (N, H, W, 1) is grey too, channels last.
    last = write_npz(tmp_path / "l.npz", train=train[..., None], test=test[..., None])
    d1 = load_datasets(npz_config(last))
    assert d1.shape == (1, 5, 7) and torch.equal(d1.test.x, d.test.x)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_colour_images_are_channel_major_whatever_the_stored_layout(tmp_path, layout):
    chw = images(8, (3, 4, 6))  # (N, C, H, W)
    stored = chw if layout == "nchw" else chw.transpose(0, 2, 3, 1)  # (N, H, W, C)
    path = write_npz(tmp_path / "c.npz", train=stored, test=stored)
    d = load_datasets(npz_config(path, val_size=2))
    assert d.shape == (3, 4, 6)
    assert torch.equal(d.test.x, torch.from_numpy(chw).reshape(8, 72).float() / 255)


def test_a_given_val_split_is_the_validation_split(tmp_path):
    train, val, test = images(20, (4, 4)), images(9, (4, 4), 1), images(6, (4, 4), 2)
    path = write_npz(tmp_path / "v.npz", train=train, val=val, test=test)
    d = load_datasets(npz_config(path, val_size=7))
    assert (len(d.train), len(d.val), len(d.test)) == (20, 7, 6)  # train is not held out of
    assert torch.equal(d.val.x, torch.from_numpy(val[:7]).reshape(7, 16).float() / 255)
    with pytest.raises(DataError, match="val_size: got 10.*has 9 examples.*at most 9"):
        load_datasets(npz_config(path, val_size=10))


def test_float_pixels_eight_bit_or_continuous(tmp_path):
    levels = images(10, (3, 3))
    eight = write_npz(tmp_path / "e.npz", train=levels / 255.0, test=levels / 255.0)
    src = read_source(npz_config(eight))
    assert src.pixels == PIXELS_8BIT and src.train.x.dtype == torch.uint8  # one compact copy
    assert torch.equal(src.train.x, torch.from_numpy(levels).reshape(10, 9))
    rng = np.random.default_rng(0)
    cont = rng.random((10, 3, 3)).astype(np.float32)
    path = write_npz(tmp_path / "f.npz", train=cont, test=cont)
    src = read_source(npz_config(path))
    assert src.pixels == PIXELS_CONTINUOUS and src.train.x.dtype == torch.float32
    d = prepare(src, npz_config(path))
    assert torch.equal(d.test.x, torch.from_numpy(cont).reshape(10, 9))
    # Grey levels with a Bernoulli decoder: fine (a cross-entropy). A density needs 8 bits.
    with pytest.raises(DataError, match="not multiples of 1/255"):
        prepare(src, npz_config(path), dequantize=True)
    deq = prepare(read_source(npz_config(eight)), npz_config(eight), dequantize=True)
    pixel = torch.from_numpy(levels).reshape(10, 9).float()
    offset = deq.test.x * 256 - pixel
    assert deq.train_noise == NOISE_UNIFORM and (offset >= 0).all() and (offset < 1).all()


def test_binary_data_declared_checked_and_scored_as_an_nll(tmp_path):
    bits = (images(12, (4, 4)) > 127).astype(np.float32)
    path = write_npz(tmp_path / "b.npz", train=bits, test=bits)
    src = read_source(npz_config(path, binary=True))
    assert src.pixels == PIXELS_BINARY
    d = prepare(src, npz_config(path, binary=True))
    assert set(d.train.x.unique().tolist()) == {0.0, 1.0}
    from vae_study import metrics as M

    binary = RunConfig(data=npz_config(path, binary=True))
    assert binary.binary_data and binary.quantity == M.QUANTITY_NLL
    assert RunConfig(data=npz_config(path)).quantity == M.QUANTITY_CROSS_ENTROPY
    with pytest.raises(ConfigError, match="data are binary"):
        RunConfig(data=npz_config(path, binary=True), model=ModelConfig(likelihood="gaussian"))
    # uint8 binary images are 0/255; 0/1 levels are refused with the reason.
    write_npz(path, train=bits.astype(np.uint8), test=bits.astype(np.uint8))
    with pytest.raises(DataError, match="other than 0 and 255.*uint8 is read as levels 0-255"):
        read_source(npz_config(path, binary=True))
    grey = write_npz(tmp_path / "g.npz", train=images(5, (2, 2)), test=images(5, (2, 2)))
    with pytest.raises(DataError) as err:
        read_source(npz_config(grey, binary=True, val_size=1))
    assert "data.binary: true" in str(err.value) and str(grey) in str(err.value)


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_eight_bit_files_binarize_like_mnist_with_a_val_split(tmp_path, binarize):
    train, val, test = images(40, (4, 4)), images(10, (4, 4), 1), images(10, (4, 4), 2)
    path = write_npz(tmp_path / "d.npz", train=train, val=val, test=test)
    d = load_datasets(npz_config(path, binarize=binarize, val_size=10))
    for split in (d.val, d.test):  # one fixed draw
        assert set(split.x.unique().tolist()) == {0.0, 1.0}
    again = load_datasets(npz_config(path, binarize=binarize, val_size=10, train_subset=5))
    assert torch.equal(again.val.x, d.val.x) and torch.equal(again.test.x, d.test.x)
    fewer = load_datasets(npz_config(path, binarize=binarize, val_size=4))
    assert torch.equal(fewer.val.x, d.val.x[:4])  # an example's draw whatever val_size
    if binarize == "dynamic":
        assert d.train_noise == NOISE_BERNOULLI and d.train.x.unique().numel() > 2
    else:
        assert set(d.train.x.unique().tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------------------------------
# .npz: broken files, one clear message each, naming the file and the array.


@pytest.mark.parametrize(
    "arrays, fragments",
    [
        ({"train": images(10, (4, 4))}, ["no array 'test'", "it holds: train", "np.savez"]),
        (
            {"train": images(10, (4,)), "test": images(10, (4,))},
            ["array 'train'", "shape (10, 4)", "(N, H, W)"],
        ),
        (
            {"train": images(10, (2, 4, 4)), "test": images(10, (2, 4, 4))},
            ["array 'train'", "shape (10, 2, 4, 4)", "C = 1 or 3"],
        ),
        (
            {"train": images(10, (4, 4)).astype(np.int64), "test": images(10, (4, 4))},
            ["array 'train'", "dtype int64", "astype(np.uint8)"],
        ),
        (
            {"train": images(10, (4, 4)) > 5, "test": images(10, (4, 4))},
            ["array 'train'", "dtype bool"],
        ),
        (
            {
                "train": images(10, (4, 4)) / 255.0,
                "test": np.linspace(-0.5, 255, 160).reshape(10, 4, 4),
            },
            ["array 'test'", "from -0.5 to 255", "[0, 1]"],
        ),
        (
            {"train": np.full((10, 4, 4), np.nan), "test": images(10, (4, 4))},
            ["array 'train'", "160 NaN"],
        ),
        (
            {"train": images(0, (4, 4)), "test": images(10, (4, 4))},
            ["array 'train'", "empty"],
        ),
        (
            {"train": images(10, (4, 4)), "test": images(10, (4, 5))},
            ["array 'test'", "(1, 4, 5)", "array 'train'", "(1, 4, 4)", "same image shape"],
        ),
        (
            {"train": images(10, (4, 4)), "test": images(10, (4, 4)), "test_labels": [1, 2]},
            ["array 'test_labels'", "2 labels for 10 images"],
        ),
        (
            {"train": images(10, (4, 4)), "test": images(10, (4, 4)) + 0j},
            ["array 'test'", "dtype complex128"],
        ),
    ],
)
def test_broken_npz_files_are_one_clear_data_error(tmp_path, arrays, fragments):
    path = write_npz(tmp_path / "broken.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(DataError) as err:
        load_datasets(npz_config(path, val_size=2))
    msg = str(err.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_object_arrays_and_missing_or_damaged_files(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, train=np.array([None] * 3, dtype=object), test=images(3, (2, 2)))
    with pytest.raises(DataError, match=r"obj.npz, array 'train' cannot be read"):
        read_source(npz_config(path))
    with pytest.raises(DataError, match=r"nothere.npz does not exist"):
        read_source(npz_config(tmp_path / "nothere.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad.npz cannot be read as an .npz"):
        read_source(npz_config(tmp_path / "bad.npz"))


def test_val_size_must_leave_training_examples(tmp_path):
    path = write_npz(tmp_path / "s.npz", train=images(5, (2, 2)), test=images(5, (2, 2)))
    with pytest.raises(DataError, match="val_size: got 5, but the training split has only 5"):
        load_datasets(npz_config(path, val_size=5))


# ---------------------------------------------------------------------------------------
# .npy folders, memory-mapped.


def test_npy_folder_is_memory_mapped_and_read_like_npz(tmp_path, monkeypatch):
    folder = tmp_path / "arrays"
    folder.mkdir()
    train = images(20, (6, 6, 3))  # channels last
    np.save(folder / "train.npy", train)
    np.save(folder / "test.npy", train[:8])
    np.save(folder / "test_labels.npy", np.arange(8))
    modes = []
    real = np.load
    monkeypatch.setattr(
        np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or real(*a, **k)
    )
    d = load_datasets(DataConfig(dataset="npy", path=str(folder), val_size=4))
    assert modes == ["r", "r", "r"]  # train, test, test_labels
    assert d.shape == (3, 6, 6) and (len(d.train), len(d.val)) == (16, 4)
    expected = torch.from_numpy(train[:8]).permute(0, 3, 1, 2).reshape(8, 108).float() / 255
    assert torch.equal(d.test.x, expected) and d.train.labels is None
    assert torch.equal(d.test.labels, torch.arange(8))
    (folder / "test.npy").unlink()
    with pytest.raises(DataError, match=r"test.npy does not exist.*train.npy and test.npy"):
        read_source(DataConfig(dataset="npy", path=str(folder)))
    with pytest.raises(DataError, match="is not a folder"):
        read_source(DataConfig(dataset="npy", path=str(tmp_path / "none")))


# ---------------------------------------------------------------------------------------
# The data section: the keys and where relative paths point.


def test_relative_paths_are_relative_to_the_yaml_file_or_to_the_working_directory(
    tmp_path, monkeypatch
):
    study = tmp_path / "project" / "studies"
    study.mkdir(parents=True)
    (study / "run.yaml").write_text("data:\n  dataset: npz\n  path: ../data/mine.npz\n")
    monkeypatch.chdir(tmp_path)
    c = load_run_config(study / "run.yaml")
    assert c.data.path == str(tmp_path / "project" / "data" / "mine.npz")
    over = load_run_config(study / "run.yaml", ["data.path=here.npz"])  # --set: the cwd
    assert over.data.path == str(tmp_path / "here.npz")
    assert DataConfig(dataset="npy", path="x").path == str(tmp_path / "x")
    from vae_study.config.study import load_study

    (study / "s.yaml").write_text(
        "name: s\ndata:\n  dataset: image_folder\n  train_dir: imgs/train\n"
        "  test_dir: /abs/test\n  image_size: 8\nsearch:\n  space:\n"
        "    train.beta: {choice: [1.0, 2.0]}\n"
    )
    s = load_study(study / "s.yaml")
    assert s.base.data.train_dir == str(study / "imgs" / "train")
    assert s.base.data.test_dir == "/abs/test" and s.base.data.image_size == (8, 8)


@pytest.mark.parametrize(
    "keys, fragments",
    [
        ({"dataset": "npz"}, ["data.path", "the .npz file"]),
        ({"dataset": "npy"}, ["data.path", "folder of .npy files"]),
        ({"path": "x.npz"}, ["data.path", "no data.path with data.dataset: mnist"]),
        ({"dataset": "image_folder", "test_dir": "t", "image_size": 8}, ["data.train_dir"]),
        ({"dataset": "image_folder", "train_dir": "t", "test_dir": "t"}, ["data.image_size"]),
        ({"train_dir": "t"}, ["no data.train_dir with data.dataset: mnist"]),
        (
            {"dataset": "image_folder", "train_dir": "a", "test_dir": "b", "image_size": [1, 2, 3]},
            ["data.image_size", "[1, 2, 3]"],
        ),
        (
            {
                "dataset": "image_folder",
                "train_dir": "a",
                "test_dir": "b",
                "image_size": 8,
                "channels": 2,
            },
            ["data.channels", "got 2", "1 (grayscale) or 3 (RGB)"],
        ),
        ({"binary": True}, ["data.binary", "with data.dataset: mnist"]),
    ],
)
def test_data_keys_are_checked_together(keys, fragments):
    with pytest.raises(ConfigError) as err:
        DataConfig(**keys)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_own_data_keys_cannot_be_searched(tmp_path):
    from study_factory import tiny_study
    from vae_study.config.study import study_from_dict

    with pytest.raises(ConfigError, match="data.path cannot be searched"):
        study_from_dict(
            tiny_study(tmp_path, **{"search.space": {"data.path": {"choice": ["/a", "/b"]}}})
        )


# ---------------------------------------------------------------------------------------
# Image folders (torchvision's ImageFolder), written here as PNG files.


def write_pngs(folder: Path, per_class: dict[str, int], size=(10, 12), seed=0) -> list:
    """<folder>/<class>/<i>.png RGB images of ``size`` (W, H); returns their (H, W, 3) arrays
    in ImageFolder's order (classes sorted, then file names)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for cls in sorted(per_class):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class[cls]):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / cls / f"{i:03d}.png")
            out.append(pixels)
    return out


def folder_config(tmp_path: Path, **keys) -> DataConfig:
    return DataConfig(
        dataset="image_folder",
        train_dir=str(tmp_path / "train"),
        test_dir=str(tmp_path / "test"),
        **{"image_size": [12, 10], "val_size": 2, **keys},
    )


def test_image_folders_are_read_once_as_rgb_or_grey(tmp_path):
    train = write_pngs(tmp_path / "train", {"cat": 4, "dog": 3})
    test = write_pngs(tmp_path / "test", {"dog": 2}, seed=1)  # a class subset: labels agree
    d = load_datasets(folder_config(tmp_path))  # the images' own size: no interpolation
    assert d.shape == (3, 12, 10) and (len(d.train), len(d.val), len(d.test)) == (5, 2, 2)
    expected = torch.from_numpy(np.stack(test)).permute(0, 3, 1, 2).reshape(2, -1) / 255
    assert torch.equal(d.test.x, expected.float())
    assert d.test.labels.tolist() == [1, 1]  # dog is class 1 of the training folder
    src = read_source(folder_config(tmp_path))
    assert src.train.x.dtype == torch.uint8 and src.train.labels.tolist() == [0] * 4 + [1] * 3
    assert torch.equal(
        src.train.x, torch.from_numpy(np.stack(train)).permute(0, 3, 1, 2).reshape(7, -1)
    )
    grey = load_datasets(folder_config(tmp_path, channels=1, image_size=6))
    assert grey.shape == (1, 6, 6) and grey.test.x.shape == (2, 36)
    # PIL's grayscale is L = (299 R + 587 G + 114 B) / 1000 (the resize averages them too).
    from PIL import Image

    first = Image.fromarray(test[0]).convert("L").resize((6, 6), Image.BILINEAR)
    assert np.abs(grey.test.x[0].numpy() * 255 - np.asarray(first).reshape(36)).max() <= 1


def test_image_folder_problems_name_the_folder(tmp_path):
    write_pngs(tmp_path / "train", {"a": 2})
    with pytest.raises(DataError) as err:
        read_source(folder_config(tmp_path))
    assert "data.test_dir" in str(err.value) and str(tmp_path / "test") in str(err.value)
    assert "not a folder" in str(err.value)
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "notes.txt").write_text("no image")
    with pytest.raises(DataError) as err:
        read_source(folder_config(tmp_path))
    assert "holds no images" in str(err.value) and str(tmp_path / "test") in str(err.value)
    assert "Found no valid file for the classes a" in str(err.value)  # torchvision's reason
    (tmp_path / "test" / "a" / "notes.txt").unlink()
    (tmp_path / "test" / "a").rmdir()
    write_pngs(tmp_path / "test", {"b": 1})
    with pytest.raises(DataError, match="classes b that the training folder has not"):
        read_source(folder_config(tmp_path))
    broken = tmp_path / "train" / "a" / "zz.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read the image {broken}"):
        read_source(folder_config(tmp_path))


# ---------------------------------------------------------------------------------------
# CIFAR-10 through torchvision, on batches written here in its format.


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 5) -> np.ndarray:
    """cifar-10-batches-py as the Python pickles of the real archive (data (N, 3072) uint8,
    channel-major; labels); returns the test images (N, 3, 32, 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(rng.integers(0, 10, n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return data.reshape(n_test, 3, 32, 32)


@pytest.fixture
def cifar_md5_off(monkeypatch):
    """torchvision checks the md5 sums of the real archive's files; a test's files cannot
    have them, so the checks get md5 None (file present: torchvision's own rule)."""
    from torchvision.datasets import CIFAR10

    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(CIFAR10, attr, [[n, None] for n, _ in getattr(CIFAR10, attr)])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})


def test_cifar10_is_read_through_torchvision_channel_major(tmp_path, cifar_md5_off):
    test = write_cifar10(tmp_path / "d")
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path / "d"), val_size=10)
    src = read_source(cfg)
    assert src.shape == (3, 32, 32) and src.train.x.dtype == torch.uint8
    d = prepare(src, cfg)
    assert d.shape == (3, 32, 32) and (len(d.train), len(d.val), len(d.test)) == (20, 10, 5)
    assert torch.equal(d.test.x, torch.from_numpy(test).reshape(5, 3072).float() / 255)
    assert d.test.labels.dtype == torch.long and d.test.labels.shape == (5,)


def test_cifar10_missing_or_damaged_says_where_to_put_it(tmp_path, cifar_md5_off):
    with pytest.raises(DataError) as err:
        read_source(DataConfig(dataset="cifar10", root=str(tmp_path / "none")))
    msg = str(err.value)
    assert str(tmp_path / "none" / "cifar-10-batches-py") in msg
    assert "cifar-10-python.tar.gz" in msg and "VAE_STUDY_DATA" in msg
    write_cifar10(tmp_path / "d")
    (tmp_path / "d" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing or damaged"):
        read_source(DataConfig(dataset="cifar10", root=str(tmp_path / "d")))


def test_mnist_keeps_its_shape_and_one_uint8_copy(tmp_path):
    from conftest import write_mnist

    root = write_mnist(tmp_path / "d", n_train=60, n_test=20)
    src = read_source(DataConfig(root=str(root)))
    assert src.shape == (1, 28, 28) and src.train.x.dtype == torch.uint8
    d = prepare(src, DataConfig(root=str(root), val_size=10))
    assert d.shape == (1, 28, 28) and d.to("cpu").shape == (1, 28, 28)
    assert d.train.x.dtype == torch.float32 and float(d.train.x.max()) == 1.0


# ---------------------------------------------------------------------------------------
# Model pictures of any image shape.


class _LinearVAE(torch.nn.Module):
    """Just what model_pictures calls: encode, decode, mean, latent_dim."""

    def __init__(self, dim: int, latent_dim: int = 3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.enc = torch.nn.Linear(dim, 2 * latent_dim)
        self.dec = torch.nn.Linear(latent_dim, dim)

    def encode(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z):
        return self.dec(z)

    def mean(self, logits):
        return torch.sigmoid(logits)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 5, 7)])
def test_model_pictures_draw_the_data_shape_grey_or_rgb(tmp_path, monkeypatch, shape):
    from vae_study.report import model_figures

    drawn = []
    real = model_figures._grid
    monkeypatch.setattr(
        model_figures, "_grid", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1]
    )
    c, h, w = shape
    x = torch.rand(40, c * h * w, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = model_figures.model_pictures(
        None, _LinearVAE(c * h * w), x, None, tmp_path / "m.png", "t", shape=shape
    )
    assert out.is_file() and len(drawn) == 3  # pairs, samples, traversals
    pairs = drawn[0]
    colour = (3,) if c == 3 else ()
    assert pairs.shape == (2 * (h + 2) + 2, 10 * (w + 2) + 2, *colour)
    # The second test image sits in row 0, column 1, channels last for RGB.
    first = x[1].reshape(c, h, w).numpy()
    tile = pairs[2 : 2 + h, 2 + (w + 2) : 2 + (w + 2) + w]
    assert np.allclose(tile, first.transpose(1, 2, 0) if c == 3 else first[0])
    assert drawn[1].shape[:2] == (4 * (h + 2) + 2, 8 * (w + 2) + 2)
    assert drawn[2].shape[:2] == (3 * (h + 2) + 2, 9 * (w + 2) + 2)  # 3 latent dims, 9 steps


# ---------------------------------------------------------------------------------------
# A run on one's own files.


@pytest.mark.parametrize("binary", [False, True])
def test_fit_trains_and_scores_on_an_npz_file(tmp_path, binary):
    import vae_study.core.train as T
    from conftest import tiny_images
    from vae_study import metrics as M
    from vae_study.config.run import replace_keys

    def split(n, seed):
        x = tiny_images(n, seed)
        return np.where(x > 127, 255, 0).astype(np.uint8) if binary else x

    path = write_npz(tmp_path / "own.npz", train=split(120, 0), val=split(30, 1), test=split(20, 2))
    result = T.fit(
        replace_keys(
            RunConfig(),
            {
                "data.dataset": "npz",
                "data.path": str(path),
                "data.binary": binary,
                "data.val_size": 30,
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
    final = result.final
    bound = M.TEST_NLL if binary else M.bound_key("test", M.QUANTITY_CROSS_ENTROPY)
    assert bound in final and np.isfinite(final[bound])
    assert final[M.TEST_NLL_EXAMPLES] == 20


def test_binarized_mnist_is_stored_as_bytes_and_presented_as_exact_bits(tmp_path):
    from conftest import write_amat

    root = write_amat(tmp_path / "d", n=(30, 10, 10))
    cfg = DataConfig(dataset="binarized_mnist", root=str(root), val_size=10)
    src = read_source(cfg)
    assert src.pixels == PIXELS_BINARY and src.train.x.dtype == torch.uint8
    assert set(src.train.x.unique().tolist()) == {0, 255}
    d = prepare(src, cfg)
    assert d.train.x.dtype == torch.float32 and set(d.train.x.unique().tolist()) == {0.0, 1.0}


def test_the_command_line_reports_a_broken_file_in_one_line(tmp_path, capsys, monkeypatch):
    from vae_study.cli import main

    write_npz(tmp_path / "cfg" / "data" / "x.npz", train=images(10, (4, 4)))  # no test
    (tmp_path / "cfg" / "run.yaml").write_text("data:\n  dataset: npz\n  path: data/x.npz\n")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(tmp_path / "cfg" / "run.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cfg' / 'data' / 'x.npz'} has no array 'test'" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_study_on_an_npy_folder_named_relative_to_its_file(tmp_path, monkeypatch):
    from conftest import tiny_images
    from study_factory import tiny_study, write_study
    from vae_study.cli import main
    from vae_study.records import results as R
    from vae_study.records.layout import COMPLETED, RESULTS_FILE

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "train.npy", tiny_images(300, 0)[:, None])  # (N, 1, 28, 28)
    np.save(arrays / "test.npy", tiny_images(60, 1)[:, None])
    np.save(arrays / "test_labels.npy", np.arange(60) % 10)
    raw = tiny_study(
        tmp_path,
        **{
            "data": {"dataset": "npy", "path": "arrays", "val_size": 50},
            "search.num_trials": 2,
            "report.enabled": True,
            "report.dir": str(tmp_path / "reports"),
        },
    )
    study = write_study(tmp_path, raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the path is the study file's, not the working directory's
    assert main(["run", str(study)]) == 0
    table = R.read_results(tmp_path / "runs" / "tiny" / RESULTS_FILE)
    assert set(table["status"]) == {COMPLETED} and (table["data/train_examples"] == 250).all()
    assert list((tmp_path / "reports" / "tiny").glob("model_*.png"))


def test_uint8_zeros_and_ones_are_refused_unless_declared(tmp_path):
    """uint8 is read as levels 0-255: 0/1 arrays would be near-black images, silently."""
    rng = np.random.default_rng(0)
    ones = (rng.random((30, 6, 6)) > 0.5).astype(np.uint8)
    path = tmp_path / "bits.npz"
    np.savez(path, train=ones, test=ones[:10])
    cfg = DataConfig(dataset="npz", path=str(path), val_size=5)
    with pytest.raises(DataError, match=r"uint8 with every value 0 or 1.*near-black"):
        read_source(cfg)


# --- issue 19: only regular files are images; no cycle, no link out, nothing counted twice ----


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    import os

    write_pngs(tmp_path / "train", {"cat": 2})
    write_pngs(tmp_path / "test", {"cat": 1})
    os.mkfifo(tmp_path / "train" / "cat" / "x.png")  # PIL would block on it forever
    with pytest.raises(DataError, match=r"data.train_dir: .*x.png is not a regular file"):
        read_source(folder_config(tmp_path))


def test_a_link_to_an_image_anywhere_is_an_image(tmp_path):
    write_pngs(tmp_path / "store", {"cat": 1})
    write_pngs(tmp_path / "train", {"cat": 2})
    write_pngs(tmp_path / "test", {"cat": 1})
    (tmp_path / "train" / "cat" / "linked.png").symlink_to(tmp_path / "store" / "cat" / "000.png")
    assert len(read_source(folder_config(tmp_path)).train) == 3  # as git-annex stores files


@pytest.mark.parametrize(
    ("links", "fragment"),
    [
        ({"cat/again": "."}, r"cat/again links back to .*a cycle"),  # read 21 times before
        ({"cat/a": ".", "cat/b": "."}, r"cat/a links back to .*a cycle"),  # hung before
        ({"dog": "cat"}, r"dog and .*cat are the same folder .*count twice"),
        ({"cat/out": "../../elsewhere"}, r"cat/out links to .*elsewhere, outside"),
    ],
)
def test_folder_links_that_cycle_leave_or_repeat_are_refused(tmp_path, links, fragment):
    write_pngs(tmp_path / "train", {"cat": 8})
    write_pngs(tmp_path / "test", {"cat": 1})
    (tmp_path / "elsewhere").mkdir()
    for name, target in links.items():
        (tmp_path / "train" / name).symlink_to(target, target_is_directory=True)
    with pytest.raises(DataError, match=rf"data.train_dir: .*{fragment}"):
        read_source(folder_config(tmp_path))
