"""Typed run configuration: frozen dataclasses read and validated once from YAML.

A run configuration has four sections, ``data``, ``model``, ``train`` and ``eval``; a study
file adds its own sections (see ``vae_study.config.study``). Every key is checked here, so
the rest of the code receives typed objects and never a raw dict. Errors name the key, the
value received, what is allowed and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vae_study.config.yaml_file import _show, _show_key, apply_overrides, read_yaml
from vae_study.errors import ConfigError


class Section:
    """A config section: a frozen dataclass that converts and checks itself when it is built.

    Made from YAML (``build_section``) or in Python (``TrainConfig(lr=-1)``), a section goes
    through the same checks: every field is coerced to its type (lists to tuples, 1 to 1.0,
    ``1e-3`` text to a number) and ``validate`` states the rules between values. So a config
    made in a notebook is checked as strictly as one read from a study file.
    """

    SECTION: ClassVar[str] = ""  # the key prefix in messages: "train" -> "train.lr"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.SECTION}.{f.name}" if self.SECTION else f.name
            object.__setattr__(self, f.name, coerce(getattr(self, f.name), hints[f.name], key))
        self.validate()

    def validate(self) -> None:
        """Rules between values; the types are already checked."""


@dataclass(frozen=True)
class DataConfig(Section):
    """Which dataset, where it lives and how it is presented to the model."""

    SECTION: ClassVar[str] = "data"

    # mnist, fashion_mnist, binarized_mnist, cifar10: read from data.root. A researcher's own
    # images: npz (one .npz file, data.path), npy (a folder of .npy files, data.path) or
    # image_folder (folders of images, one subfolder per class: data.train_dir ...).
    dataset: Literal[
        "mnist", "fashion_mnist", "binarized_mnist", "cifar10", "npz", "npy", "image_folder"
    ] = "mnist"
    # Folder holding the datasets; None: $VAE_STUDY_DATA, else a per-user cache folder.
    root: str | None = None
    # none: grey levels in [0, 1]; dynamic: a fresh Bernoulli draw each time an example is
    # used (Burda et al. 2015); static: one draw made with the seed and kept.
    binarize: Literal["none", "dynamic", "static"] = "none"
    # Train on the first N training examples only (quick runs); None: all of them.
    train_subset: int | None = None
    # Validation examples held out of the training split (binarized_mnist, and a file
    # dataset with a val split: taken from that split). 0 disables validation metrics.
    val_size: int = 5000
    # npz: the .npz file holding arrays train, test, optional val (and train_labels ...);
    # npy: the folder holding train.npy, test.npy, optional val.npy (and train_labels.npy ...).
    # Paths (here and the *_dir keys) relative in a YAML file are relative to that file's
    # folder; given in Python or with --set, to the current directory. Stored absolute.
    path: str | None = None
    # image_folder: torchvision ImageFolder layouts (<dir>/<class>/<image>), val optional.
    train_dir: str | None = None
    val_dir: str | None = None
    test_dir: str | None = None
    # image_folder: every image resized to [H, W] (one int: square); channels 1 (converted
    # to grayscale) or 3 (RGB, the default).
    image_size: tuple[int, ...] | None = None
    channels: int | None = None
    # A file dataset (npz, npy, image_folder) whose pixels are binary, 0/1 (uint8: 0/255):
    # checked against the values when read. A Bernoulli decoder then gives an NLL.
    binary: bool = False

    def validate(self) -> None:
        _check(
            self.train_subset is None or self.train_subset >= 1,
            "data.train_subset",
            self.train_subset,
            "a positive number of examples, or null for all",
        )
        _check(
            self.val_size >= 0,
            "data.val_size",
            self.val_size,
            "a number of examples >= 0 (0 turns validation off)",
        )
        ds = self.dataset
        files = ds in FILE_DATASETS
        _check(
            (self.path is not None) == files,
            "data.path",
            self.path,
            f"the {'.npz file' if ds == 'npz' else 'folder of .npy files'} (data.dataset: {ds})"
            if files
            else f"no data.path with data.dataset: {ds} (only npz and npy read one; "
            "data.root says where the named datasets are)",
        )
        folders = ds == "image_folder"
        for key in ("train_dir", "test_dir"):
            _check(
                (getattr(self, key) is not None) == folders,
                f"data.{key}",
                getattr(self, key),
                "a folder of images, one subfolder per class (data.dataset: image_folder)"
                if folders
                else f"no data.{key} with data.dataset: {ds} (only image_folder reads folders)",
            )
        _check(
            self.val_dir is None or folders,
            "data.val_dir",
            self.val_dir,
            f"no data.val_dir with data.dataset: {ds} (only image_folder reads folders)",
        )
        _check(
            (self.image_size is not None) == folders,
            "data.image_size",
            None if self.image_size is None else list(self.image_size),
            "[H, W] (or one integer for square images) that every image is resized to"
            if folders
            else f"no data.image_size with data.dataset: {ds} (only image_folder resizes)",
        )
        if self.image_size is not None:
            _check(
                len(self.image_size) in (1, 2) and all(1 <= s <= 4096 for s in self.image_size),
                "data.image_size",
                list(self.image_size),
                "[H, W] or one integer, each from 1 to 4096 pixels",
            )
            h, w = self.image_size * 2 if len(self.image_size) == 1 else self.image_size
            object.__setattr__(self, "image_size", (h, w))
        _check(
            self.channels is None or (folders and self.channels in (1, 3)),
            "data.channels",
            self.channels,
            "1 (grayscale) or 3 (RGB) with data.dataset: image_folder"
            if folders
            else f"no data.channels with data.dataset: {ds} (only image_folder converts)",
        )
        _check(
            not self.binary or ds in OWN_DATASETS,
            "data.binary",
            self.binary,
            f"false with data.dataset: {ds}; data.binary declares a file dataset's pixels "
            "binary (use data.binarize, or data.dataset: binarized_mnist)",
        )
        if self.root is not None:
            check_path("data.root", self.root)
        for key in ("path", "train_dir", "val_dir", "test_dir"):
            value = getattr(self, key)
            if value is not None:
                check_path(f"data.{key}", value)
                object.__setattr__(self, key, os.path.abspath(os.path.expanduser(value)))


# Datasets a researcher brings: read from data.path (files) or data.*_dir (image folders).
FILE_DATASETS = ("npz", "npy")
OWN_DATASETS = ("npz", "npy", "image_folder")
DATA_PATH_KEYS = ("path", "train_dir", "val_dir", "test_dir")


def resolve_data_paths(raw: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """``raw`` with relative ``data.path`` and ``data.*_dir`` made relative to ``folder``
    (the folder of the YAML file that names them), so a study file and its data move
    together and a run reads the same files from any working directory."""
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, Mapping):
        data = dict(data)
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                data[key] = os.path.abspath(os.path.join(folder, value))
        raw["data"] = data
    return raw


@dataclass(frozen=True)
class ModelConfig(Section):
    """Encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior N(0, I)."""

    SECTION: ClassVar[str] = "model"

    # mlp, conv, or a user model by import path, package.module:ClassName (imported only
    # when a model is built; the protocol is in vae_study.core.model).
    arch: str = "mlp"
    latent_dim: int = 20
    # Hidden widths of the encoder; the decoder mirrors them (784-400-20 is the seed VAE).
    hidden: tuple[int, ...] = (400,)
    activation: Literal["relu", "tanh", "elu", "gelu", "silu", "softplus", "leaky_relu"] = "relu"
    # bernoulli: from logits; a likelihood of binary data, a cross-entropy on grey levels.
    # continuous_bernoulli (Loaiza-Ganem & Cunningham 2019) and gaussian: densities, trained
    # and scored on uniformly dequantised 8-bit grey levels.
    likelihood: Literal["bernoulli", "continuous_bernoulli", "gaussian"] = "bernoulli"
    # Gaussian likelihood only: the decoder's standard deviation (fixed, or its initial value
    # when learn_std is true; learned per pixel, never below std_floor).
    gaussian_std: float = 0.1
    learn_std: bool = False
    std_floor: float = 1e-3
    # A user model's keyword arguments: {name: scalar or list of scalars}. Searchable as
    # model.options.<name>; built-in archs take none.
    options: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # frozen and hashable, options (a mapping) included
        fields = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"]
        options = sorted(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in self.options.items()
        )
        return hash((*fields, tuple(options)))

    def validate(self) -> None:
        # Lists as YAML gives them (a tuple from Python too): one form, so equal is equal.
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        object.__setattr__(self, "options", options)
        _check(
            self.arch in BUILTIN_ARCHS or _IMPORT_PATH.fullmatch(self.arch) is not None,
            "model.arch",
            self.arch,
            "mlp, conv, or a user model's import path package.module:ClassName "
            "(such as examples.shapes.shapes_vae:ShapesVAE)",
        )
        if self.options and self.arch in BUILTIN_ARCHS:
            raise ConfigError(
                f"model.options: got {_show(self.options)} with model.arch: {self.arch}; "
                "only a user model (model.arch: package.module:ClassName) takes options: "
                "remove them, or set model.arch to your class"
            )
        for name, value in self.options.items():
            _check(
                isinstance(name, str) and name.isidentifier(),
                "model.options",
                name,
                "option names that are Python identifiers (they are keyword arguments)",
            )
            _check(
                _option_value(value),
                f"model.options.{name}",
                value,
                "a number, string, true/false, null or a list of them",
            )
        _check(
            self.latent_dim >= 1,
            "model.latent_dim",
            self.latent_dim,
            "an integer >= 1 (the number of latent dimensions)",
        )
        _check(
            len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
            "model.hidden",
            list(self.hidden),
            "a non-empty list of positive layer widths such as [400]",
        )
        _check(
            self.gaussian_std > 0 and math.isfinite(self.gaussian_std),
            "model.gaussian_std",
            self.gaussian_std,
            "a positive standard deviation such as 0.1",
        )
        _check(
            0 < self.std_floor <= self.gaussian_std and math.isfinite(self.std_floor),
            "model.std_floor",
            self.std_floor,
            f"a positive floor of the learned std, at most model.gaussian_std={self.gaussian_std}",
        )


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation of one run: Adam on the beta-weighted objective."""

    SECTION: ClassVar[str] = "train"

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    # Adam's (beta1, beta2) and eps; Burda et al. 2015 trained with (0.99, 0.999) and 1e-4.
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # constant: train.lr throughout. burda: the IWAE paper's 8 stages, stage i at
    # lr * 10**(-i/7) for a 3**i / 3280 share of the updates (its 3**i epochs of 3280,
    # scaled to train.epochs), so a short run passes through every stage.
    lr_schedule: Literal["constant", "burda"] = "constant"
    # Weight of the rate: loss = D + beta * R. For iwae it scales log p(z) - log q(z|x) in
    # each importance weight (beta = 1 is the IWAE bound of Burda et al. 2015).
    beta: float = 1.0
    # Samples z_k ~ q(z|x) per example: the average of K terms (elbo) or the K-sample bound.
    k: int = 1
    objective: Literal["elbo", "iwae"] = "elbo"
    seed: int = 0
    # auto: the GPU when there is one, else the CPU.
    device: str = "auto"
    # Arithmetic of the encoder and decoder while training: float32, or bfloat16 mixed
    # precision (autocast; weights, objective and every evaluation stay float32).
    precision: Literal["float32", "bfloat16"] = "float32"
    # Let CUDA run float32 matrix products and convolutions in TensorFloat-32 (a 10-bit
    # mantissa; Ampere and newer GPUs): faster, less exact. Off: float32 means float32.
    tf32: bool = False

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(
            self.lr > 0 and math.isfinite(self.lr),
            "train.lr",
            self.lr,
            "a positive learning rate such as 1e-3",
        )
        _check(
            len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
            "train.adam_betas",
            list(self.adam_betas),
            "two numbers in [0, 1), Adam's (beta1, beta2) such as [0.9, 0.999]",
        )
        _check(
            self.adam_eps > 0 and math.isfinite(self.adam_eps),
            "train.adam_eps",
            self.adam_eps,
            "a positive number such as 1e-8 (Adam's denominator term)",
        )
        _check(
            self.beta > 0 and math.isfinite(self.beta),
            "train.beta",
            self.beta,
            "a positive weight of the rate such as 1.0 (beta < 1 favours reconstruction)",
        )
        _check(self.k >= 1, "train.k", self.k, "an integer >= 1 (samples per example)")
        _check(0 <= self.seed <= MAX_SEED, "train.seed", self.seed, "an integer in [0, 2**32 - 1]")
        _check(
            _DEVICE.fullmatch(self.device) is not None,
            "train.device",
            self.device,
            "one of auto, cpu, cuda, cuda:N with N a GPU index (0, 1, ...)",
        )


@dataclass(frozen=True)
class EvalConfig(Section):
    """Test-set evaluation after training."""

    SECTION: ClassVar[str] = "eval"

    # Importance samples for test/nll = -L_K (5000 is the literature's standard).
    k: int = 5000
    # Test examples used for test/nll and test/bound_gap, the first ones of the fixed test
    # split (null: all of it); lower it for quick runs.
    nll_examples: int | None = None
    # val/nll when training ends, what studies select on: importance samples and the number
    # of validation examples (the first ones of the fixed validation split).
    val_k: int = 1000
    val_examples: int = 1000
    # Rows (examples x samples) decoded at once while estimating test/nll: bounds memory.
    chunk_size: int = 8192
    # Test examples used for the ELBO surgery terms (mutual information, marginal KL).
    surgery_examples: int = 10000

    def validate(self) -> None:
        _check(self.k >= 1, "eval.k", self.k, "an integer >= 1 (importance samples)")
        _check(
            self.nll_examples is None or self.nll_examples >= 1,
            "eval.nll_examples",
            self.nll_examples,
            "a positive number of test examples, or null for all",
        )
        _check(self.chunk_size >= 1, "eval.chunk_size", self.chunk_size, "an integer >= 1")
        _check(self.val_k >= 1, "eval.val_k", self.val_k, "an integer >= 1 (importance samples)")
        _check(
            self.val_examples >= 0,
            "eval.val_examples",
            self.val_examples,
            "a number of validation examples >= 0 (0: no val/nll)",
        )
        _check(
            self.surgery_examples >= 2,
            "eval.surgery_examples",
            self.surgery_examples,
            "an integer >= 2",
        )


@dataclass(frozen=True)
class RunConfig:
    """The configuration of one training run: what ``fit`` needs and nothing else."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.model.likelihood in DENSITY_LIKELIHOODS and self.binary_data:
            raise ConfigError(
                f"model.likelihood: got {self.model.likelihood!r}, a density for grey levels, "
                f"but the data are binary (data.dataset={self.data.dataset!r}, "
                f"data.binarize={self.data.binarize!r}, data.binary={self.data.binary}); use "
                "bernoulli, or data.binarize: none on grey-level data"
            )

    @property
    def binary_data(self) -> bool:
        """The model sees 0/1 pixels: binarized (static or dynamic), binarized_mnist, or a
        file dataset declared binary (``data.binary``, checked against its values)."""
        data = self.data
        return data.binarize != "none" or data.dataset == "binarized_mnist" or data.binary

    @property
    def dequantized(self) -> bool:
        """A density likelihood on 8-bit grey levels: data dequantised, bits/dim reported."""
        return self.model.likelihood in DENSITY_LIKELIHOODS

    @property
    def quantity(self) -> str:
        """What -L_K is here: ``metrics.QUANTITY_NLL`` or ``QUANTITY_CROSS_ENTROPY``."""
        from vae_study import metrics as M

        if self.model.likelihood == "bernoulli" and not self.binary_data:
            return M.QUANTITY_CROSS_ENTROPY
        return M.QUANTITY_NLL

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


BUILTIN_ARCHS = ("mlp", "conv")
# package.module:ClassName (dotted module path, one class name).
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_import_path(arch: str) -> bool:
    """``model.arch`` names a user model (``package.module:ClassName``), not mlp or conv."""
    return arch not in BUILTIN_ARCHS and _IMPORT_PATH.fullmatch(arch) is not None


def _option_value(value: Any) -> bool:
    """A scalar, or a list of scalars: what YAML and a search space can carry."""
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, list | tuple):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)


# Likelihoods that are densities of continuous data: scored on dequantised 8-bit pixels.
DENSITY_LIKELIHOODS = ("continuous_bernoulli", "gaussian")
RUN_SECTIONS = ("data", "model", "train", "eval")

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
MAX_SEED = 2**32 - 1  # what numpy (Optuna's samplers) accepts; torch takes the same range
# Upper bounds of counts. Beyond them a run cannot finish (or fit in memory), and the value
# would fail deep inside torch, Ray or Optuna instead of here. Every other integer must fit
# in 64 bits.
MAX_COUNT = {
    "train.epochs": 10**6,
    "search.num_trials": 10**6,
    "search.max_concurrent": 10**6,
    "train.k": 10**6,
    "eval.k": 10**6,
    "model.latent_dim": 10**6,
    "model.hidden": 10**6,
}
_INT64 = 2**63


def check_path(key: str, value: str) -> None:
    """Refuse a path that names nothing: empty or blank (it would mean the current
    directory) or holding a NUL byte (no file system takes one)."""
    _check(
        bool(value.strip()) and "\0" not in value,
        key,
        value,
        "a path, not an empty string (nor blanks or a NUL byte)",
    )


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {_show(value)}, expected {allowed}")


# ---------------------------------------------------------------------------------------
# Generic conversion: plain YAML values -> typed, frozen dataclasses.


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def build_section(cls: type, raw: Any, section: str) -> Any:
    """Make the dataclass ``cls`` from the mapping ``raw``, checking every key and type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{section}: expected a mapping of keys, got {type(raw).__name__} {_show(raw)}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {section}.{_show_key(key)}; the keys of {section} are: "
                + ", ".join(names)
                + did_you_mean(str(key), names)
            )
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
    obj = cls(**kwargs)  # a Section checks itself when built
    if not isinstance(obj, Section) and hasattr(obj, "validate"):
        obj.validate()
    return obj


def did_you_mean(key: str, names: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the name in ``names`` closest to ``key``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; convert where it is lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        allowed = " or ".join(_describe(a) for a in args if a is not type(None))
        raise ConfigError(f"{key}: got {_show(value)}, expected {allowed}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{key}: got {_show(value)}, expected one of " + ", ".join(str(a) for a in args)
            )
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {_show(value)}, expected a mapping of keys")
        return {k: coerce(v, args[1], f"{key}.{_show_key(k)}") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: got {_show(value)}, expected a list such as [400]")
        return tuple(coerce(v, args[0], key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {_show(value)}, expected true or false")
        return value
    if hint is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{key}: got {_show(value)}, expected an integer")
        value = int(value)
        limit = MAX_COUNT.get(key)
        if limit is not None and value > limit:
            raise ConfigError(f"{key}: got {_show(value)}, expected at most {limit}")
        if not -_INT64 <= value < _INT64:
            raise ConfigError(
                f"{key}: got {_show(value)}, expected an integer that fits in 64 bits"
            )
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string; accept it as the number it means.
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: got {_show(value)}, expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: got {_show(value)}, expected a finite number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {_show(value)}, expected a string")
        return value
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {_show(value)}, expected a mapping")
        return {
            coerce(k, args[0], key): coerce(v, args[1], f"{key}.{_show_key(k)}")
            for k, v in value.items()
        }
    if isinstance(hint, type) and isinstance(value, hint):
        return value  # a section or Param already built (and checked)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # built and checked already (a study's search.space)
            return value
        return build_section(hint, value, key)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug, not user input


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list"
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def run_config_from_dict(
    raw: Mapping[str, Any], *, extra_sections: Sequence[str] = ()
) -> RunConfig:
    """Build a ``RunConfig`` from the run sections of ``raw``.

    ``extra_sections`` are top-level keys another layer (the study) owns and checks itself.
    """
    allowed = set(RUN_SECTIONS) | set(extra_sections)
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"unknown section {_show(key)}; the sections are: "
                + ", ".join(sorted(allowed))
                + did_you_mean(str(key), sorted(allowed))
            )
    return RunConfig(
        data=build_section(DataConfig, raw.get("data"), "data"),
        model=build_section(ModelConfig, raw.get("model"), "model"),
        train=build_section(TrainConfig, raw.get("train"), "train"),
        eval=build_section(EvalConfig, raw.get("eval"), "eval"),
    )


def load_run_config(
    path: str | Path, overrides: Sequence[str] = (), *, extra_sections: Sequence[str] = ()
) -> RunConfig:
    """Read a run (or study) file and build its run configuration."""
    raw = resolve_data_paths(read_yaml(path), Path(path).parent)
    return run_config_from_dict(apply_overrides(raw, overrides), extra_sections=extra_sections)


def replace_keys(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """A copy of ``config`` with dotted keys (``train.beta``) replaced, all checked again."""
    raw = to_dict(config)
    raw = apply_overrides(raw, [])
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if section not in RUN_SECTIONS or not key:
            raise ConfigError(
                f"{dotted}: expected section.key with section one of " + ", ".join(RUN_SECTIONS)
            )
        # model.options.width: a key inside a mapping key (made if absent).
        *outer, last = key.split(".")
        node = raw[section]
        for part in outer:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return run_config_from_dict(raw)
