"""A run's configuration: its ``model``, ``train`` and ``eval`` sections (``data`` is in
``config.data``), ``RunConfig`` that holds the four, and reading one from YAML.

A study file adds its own sections (see ``vae_study.config.study``). Every key is checked by
the schema (``config.schema``), so the rest of the code receives typed objects and never a
raw dict. Errors name the key, the value received, what is allowed and how to fix it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vae_study.config.data import DataConfig, resolve_data_paths
from vae_study.config.messages import did_you_mean, require, show
from vae_study.config.schema import MAX_COUNT, Section, build_section, rule, to_dict
from vae_study.config.yaml_file import apply_overrides, read_yaml
from vae_study.errors import ConfigError

RUN_SECTIONS = ("data", "model", "train", "eval")
BUILTIN_ARCHS = ("mlp", "conv")
# package.module:ClassName (dotted module path, one class name).
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# Likelihoods that are densities of continuous data: scored on dequantised 8-bit pixels.
DENSITY_LIKELIHOODS = ("continuous_bernoulli", "gaussian")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
MAX_SEED = 2**32 - 1  # what numpy (Optuna's samplers) accepts; torch takes the same range


def is_import_path(arch: str) -> bool:
    """``model.arch`` names a user model (``package.module:ClassName``), not mlp or conv."""
    return arch not in BUILTIN_ARCHS and _IMPORT_PATH.fullmatch(arch) is not None


def _option_value(value: Any) -> bool:
    """A scalar, or a list of scalars: what YAML and a search space can carry."""
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, list | tuple):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)


@dataclass(frozen=True)
class ModelConfig(Section):
    """Encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior N(0, I)."""

    SECTION: ClassVar[str] = "model"

    # mlp, conv, or a user model by import path, package.module:ClassName (imported only
    # when a model is built; the protocol is in vae_study.core.model).
    arch: str = rule(
        "mlp",
        test=lambda arch: arch in BUILTIN_ARCHS or is_import_path(arch),
        expected="mlp, conv, or a user model's import path package.module:ClassName "
        "(such as examples.shapes.shapes_vae:ShapesVAE)",
    )
    latent_dim: int = rule(
        20, ge=1, at_most=MAX_COUNT, expected="an integer >= 1 (the number of latent dimensions)"
    )
    # Hidden widths of the encoder; the decoder mirrors them (784-400-20 is the seed VAE).
    hidden: tuple[int, ...] = rule(
        (400,),
        ge=1,
        at_most=MAX_COUNT,
        test=bool,  # not empty
        expected="a non-empty list of positive layer widths such as [400]",
    )
    activation: Literal["relu", "tanh", "elu", "gelu", "silu", "softplus", "leaky_relu"] = "relu"
    # bernoulli: from logits; a likelihood of binary data, a cross-entropy on grey levels.
    # continuous_bernoulli (Loaiza-Ganem & Cunningham 2019) and gaussian: densities, trained
    # and scored on uniformly dequantised 8-bit grey levels.
    likelihood: Literal["bernoulli", "continuous_bernoulli", "gaussian"] = "bernoulli"
    # Gaussian likelihood only: the decoder's standard deviation (fixed, or its initial value
    # when learn_std is true; learned per pixel, never below std_floor).
    gaussian_std: float = rule(0.1, gt=0, expected="a positive standard deviation such as 0.1")
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
        if self.options and self.arch in BUILTIN_ARCHS:
            raise ConfigError(
                f"model.options: got {show(self.options)} with model.arch: {self.arch}; "
                "only a user model (model.arch: package.module:ClassName) takes options: "
                "remove them, or set model.arch to your class"
            )
        for name, value in self.options.items():
            require(
                isinstance(name, str) and name.isidentifier(),
                "model.options",
                name,
                "option names that are Python identifiers (they are keyword arguments)",
            )
            require(
                _option_value(value),
                f"model.options.{name}",
                value,
                "a number, string, true/false, null or a list of them",
            )
        require(
            0 < self.std_floor <= self.gaussian_std,
            "model.std_floor",
            self.std_floor,
            f"a positive floor of the learned std, at most model.gaussian_std={self.gaussian_std}",
        )


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation of one run: Adam on the beta-weighted objective."""

    SECTION: ClassVar[str] = "train"

    epochs: int = rule(10, ge=1, at_most=MAX_COUNT, expected="an integer >= 1")
    batch_size: int = rule(128, ge=1, expected="an integer >= 1")
    lr: float = rule(1e-3, gt=0, expected="a positive learning rate such as 1e-3")
    # Adam's (beta1, beta2) and eps; Burda et al. 2015 trained with (0.99, 0.999) and 1e-4.
    adam_betas: tuple[float, ...] = rule(
        (0.9, 0.999),
        ge=0,
        lt=1,
        test=lambda betas: len(betas) == 2,
        expected="two numbers in [0, 1), Adam's (beta1, beta2) such as [0.9, 0.999]",
    )
    adam_eps: float = rule(
        1e-8, gt=0, expected="a positive number such as 1e-8 (Adam's denominator term)"
    )
    # constant: train.lr throughout. burda: the IWAE paper's 8 stages, stage i at
    # lr * 10**(-i/7) for a 3**i / 3280 share of the updates (its 3**i epochs of 3280,
    # scaled to train.epochs), so a short run passes through every stage.
    lr_schedule: Literal["constant", "burda"] = "constant"
    # Weight of the rate: loss = D + beta * R. For iwae it scales log p(z) - log q(z|x) in
    # each importance weight (beta = 1 is the IWAE bound of Burda et al. 2015).
    beta: float = rule(
        1.0,
        gt=0,
        expected="a positive weight of the rate such as 1.0 (beta < 1 favours reconstruction)",
    )
    # Samples z_k ~ q(z|x) per example: the average of K terms (elbo) or the K-sample bound.
    k: int = rule(1, ge=1, at_most=MAX_COUNT, expected="an integer >= 1 (samples per example)")
    objective: Literal["elbo", "iwae"] = "elbo"
    seed: int = rule(0, ge=0, le=MAX_SEED, expected="an integer in [0, 2**32 - 1]")
    # auto: the GPU when there is one, else the CPU.
    device: str = rule(
        "auto",
        test=_DEVICE.fullmatch,
        expected="one of auto, cpu, cuda, cuda:N with N a GPU index (0, 1, ...)",
    )
    # Arithmetic of the encoder and decoder while training: float32, or bfloat16 mixed
    # precision (autocast; weights, objective and every evaluation stay float32).
    precision: Literal["float32", "bfloat16"] = "float32"
    # Let CUDA run float32 matrix products and convolutions in TensorFloat-32 (a 10-bit
    # mantissa; Ampere and newer GPUs): faster, less exact. Off: float32 means float32.
    tf32: bool = False


@dataclass(frozen=True)
class EvalConfig(Section):
    """Test-set evaluation after training."""

    SECTION: ClassVar[str] = "eval"

    # Importance samples for test/nll = -L_K (5000 is the literature's standard).
    k: int = rule(5000, ge=1, at_most=MAX_COUNT, expected="an integer >= 1 (importance samples)")
    # Test examples used for test/nll and test/bound_gap, the first ones of the fixed test
    # split (null: all of it); lower it for quick runs.
    nll_examples: int | None = rule(
        None, ge=1, expected="a positive number of test examples, or null for all"
    )
    # val/nll when training ends, what studies select on: importance samples and the number
    # of validation examples (the first ones of the fixed validation split).
    val_k: int = rule(1000, ge=1, expected="an integer >= 1 (importance samples)")
    val_examples: int = rule(
        1000, ge=0, expected="a number of validation examples >= 0 (0: no val/nll)"
    )
    # Rows (examples x samples) decoded at once while estimating test/nll: bounds memory.
    chunk_size: int = rule(8192, ge=1, expected="an integer >= 1")
    # Test examples used for the ELBO surgery terms (mutual information, marginal KL).
    surgery_examples: int = rule(10000, ge=2, expected="an integer >= 2")


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
                f"unknown section {show(key)}; the sections are: "
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
