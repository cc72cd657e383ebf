"""Every bad configuration gives one message naming the key, the value and what is allowed."""

from __future__ import annotations

import re

import pytest

from vae_study.config.run import RunConfig, load_run_config, replace_keys, run_config_from_dict
from vae_study.config.yaml_file import apply_overrides, read_yaml
from vae_study.errors import ConfigError


def test_defaults_are_the_seed_notebook_model():
    c = RunConfig()
    assert (c.model.hidden, c.model.latent_dim, c.model.activation) == ((400,), 20, "relu")
    assert (c.train.batch_size, c.train.lr, c.train.epochs, c.eval.k) == (128, 1e-3, 10, 5000)


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "data: {dataset: fashion_mnist}\nmodel:\n  hidden: [200, 200]\n"
        "train:\n  lr: 1e-3\n  beta: 2\n"
    )
    c = load_run_config(path, ["train.beta=0.5", "model.latent_dim=50", "data.root=/d"])
    assert c.data.dataset == "fashion_mnist" and c.data.root == "/d"
    assert c.model.hidden == (200, 200) and c.model.latent_dim == 50
    assert c.train.beta == 0.5 and isinstance(c.train.beta, float)
    assert c.train.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string; it is a number here


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"train": {"bet": 1}}, ["unknown key train.bet", "did you mean beta"]),
        ({"trian": {}}, ["unknown section 'trian'", "did you mean train"]),
        ({"train": {"beta": 0}}, ["train.beta", "got 0", "positive"]),
        ({"train": {"beta": -1.5}}, ["train.beta", "-1.5"]),
        ({"train": {"beta": ".nan"}}, ["train.beta"]),
        ({"train": {"k": 0}}, ["train.k", "got 0", ">= 1"]),
        ({"train": {"k": 2.5}}, ["train.k", "2.5", "integer"]),
        ({"train": {"epochs": "ten"}}, ["train.epochs", "'ten'", "integer"]),
        ({"train": {"lr": -1e-3}}, ["train.lr", "positive"]),
        ({"train": {"objective": "vae"}}, ["train.objective", "'vae'", "elbo, iwae"]),
        ({"train": {"adam_betas": [0.9]}}, ["train.adam_betas", "[0.9]", "two numbers"]),
        ({"train": {"adam_betas": [1.0, 0.999]}}, ["train.adam_betas", "[0, 1)"]),
        ({"train": {"adam_eps": 0}}, ["train.adam_eps", "positive"]),
        ({"train": {"lr_schedule": "cosine"}}, ["train.lr_schedule", "constant, burda"]),
        ({"train": {"device": "tpu"}}, ["train.device", "auto, cpu, cuda"]),
        ({"train": {"batch_size": True}}, ["train.batch_size", "integer"]),
        ({"model": {"latent_dim": 0}}, ["model.latent_dim", "got 0"]),
        ({"model": {"hidden": []}}, ["model.hidden", "non-empty"]),
        ({"model": {"hidden": [400, 0]}}, ["model.hidden", "positive"]),
        ({"model": {"hidden": "big"}}, ["model.hidden", "list"]),
        ({"model": {"activation": "sigmoidal"}}, ["model.activation", "relu"]),
        ({"model": {"likelihood": "poisson"}}, ["model.likelihood", "bernoulli, gaussian"]),
        ({"model": {"gaussian_std": 0}}, ["model.gaussian_std", "positive"]),
        ({"model": {"learn_std": "yes please"}}, ["model.learn_std", "true or false"]),
        ({"data": {"dataset": "svhn"}}, ["data.dataset", "'svhn'", "mnist, fashion_mnist"]),
        ({"data": {"binarize": "sometimes"}}, ["data.binarize", "none, dynamic, static"]),
        ({"data": {"train_subset": 0}}, ["data.train_subset", "positive"]),
        ({"data": {"val_size": -1}}, ["data.val_size"]),
        ({"data": {"root": 3}}, ["data.root", "a string"]),
        ({"eval": {"k": 0}}, ["eval.k", ">= 1"]),
        ({"eval": {"nll_examples": 0}}, ["eval.nll_examples"]),
        ({"data": [1, 2]}, ["data: expected a mapping"]),
    ],
)
def test_bad_values_name_the_key_and_the_rule(raw, fragments):
    with pytest.raises(ConfigError) as err:
        run_config_from_dict(raw)
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  beta: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        read_yaml(path)


def test_python_tags_are_refused_by_the_safe_loader(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)


def test_missing_file_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("train.beta", "expected section.key=value"),
        ("train..beta=1", "expected section.key=value or key=value"),
        ("train.beta=[1", "not valid YAML"),
        ("train.beta.x=1", "beta is not a section"),
    ],
)
def test_bad_overrides(item, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        apply_overrides({"train": {"beta": 1.0}}, [item])


def test_replace_keys_checks_again():
    c = replace_keys(RunConfig(), {"train.beta": 3})
    assert c.train.beta == 3.0
    with pytest.raises(ConfigError, match="train.beta"):
        replace_keys(RunConfig(), {"train.beta": -3})
    with pytest.raises(ConfigError, match="section.key"):
        replace_keys(RunConfig(), {"beta": 3})


def test_a_config_made_in_python_is_checked_as_strictly_as_one_read_from_yaml():
    from vae_study.config.data import DataConfig
    from vae_study.config.run import EvalConfig, ModelConfig, TrainConfig

    for make, fragment in (
        (lambda: TrainConfig(lr=-1), "train.lr: got -1.0"),
        (lambda: TrainConfig(epochs="3"), "train.epochs: got '3', expected an integer"),
        (lambda: TrainConfig(seed=2**32), "train.seed"),
        (lambda: ModelConfig(hidden=()), "model.hidden: got []"),
        (lambda: ModelConfig(activation="sigmoid"), "model.activation: got 'sigmoid'"),
        (lambda: DataConfig(val_size=-1), "data.val_size: got -1"),
        (lambda: EvalConfig(k=0), "eval.k: got 0"),
        (
            lambda: RunConfig(
                model=ModelConfig(likelihood="gaussian"), data=DataConfig(binarize="dynamic")
            ),
            "the data are binary",
        ),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            make()
    # Lossless conversions are made, as when reading YAML: lists to tuples, ints to floats.
    model = ModelConfig(hidden=[200, 200])
    assert model.hidden == (200, 200) and hash(model)  # frozen and hashable
    train = TrainConfig(lr=1, beta="0.5")
    assert train.lr == 1.0 and isinstance(train.lr, float) and train.beta == 0.5


# --- issue 19: a text input is a small regular file; an empty path is refused -----------------


def test_a_config_file_that_never_ends_or_is_huge_is_refused(tmp_path):
    import os

    from vae_study.config.yaml_file import MAX_TEXT_BYTES, read_yaml

    with pytest.raises(ConfigError, match=r"/dev/zero is not a regular file"):
        read_yaml("/dev/zero")
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_TEXT_BYTES + 1)
    with pytest.raises(ConfigError, match=rf"huge.yaml has {MAX_TEXT_BYTES + 1} bytes"):
        read_yaml(huge)
    fifo = tmp_path / "study.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(ConfigError, match=r"study.yaml is not a regular file"):
        read_yaml(fifo)
    with pytest.raises(ConfigError, match=r"is a folder"):
        read_yaml(tmp_path)
    link = tmp_path / "link.yaml"
    (tmp_path / "real.yaml").write_text("train: {epochs: 2}\n")
    link.symlink_to(tmp_path / "real.yaml")  # a link to a regular file is fine (git-annex)
    assert read_yaml(link) == {"train": {"epochs": 2}}


@pytest.mark.parametrize("key", ["data.root", "data.path", "data.train_dir"])
@pytest.mark.parametrize("value", ["", "  ", "a\0b"])
def test_an_empty_data_path_is_refused(key, value):
    from vae_study.config.data import DataConfig

    extra = {"path": "x.npz", "dataset": "npz"} if key == "data.path" else {}
    if key == "data.train_dir":
        extra = {"dataset": "image_folder", "test_dir": "t", "image_size": 8}
    extra[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=rf"{key}: got .*, expected a path, not an empty"):
        DataConfig(**extra)
