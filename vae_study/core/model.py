"""The VAE: encoder q(z|x) = N(mu, diag sigma^2), decoder p(x|z), prior p(z) = N(0, I).

The vocabulary is the pytorch/examples one (``encode``, ``reparameterize``, ``decode``,
``forward``); unlike it, sizes come from ``ModelConfig`` and from the shape of the images
(``data.shape``: channels, height, width; examples travel flat, (B, C*H*W)), and the
likelihood is a separate, numerically stable ``log_likelihood`` (Bernoulli from logits, or
Gaussian) so that distortion and rate are never summed before the objective decides how to
weigh them.

``model.arch`` is ``mlp``, ``conv`` (stride-2 convolutions as far as the image size allows)
or a **user model** by import path, ``package.module:ClassName``, imported (``importlib``)
only when a model is built. Its protocol (``UserModel``):

- built as ``ClassName(cfg, shape, **options)``: ``cfg`` the ``ModelConfig`` (use at least
  ``cfg.latent_dim``), ``shape`` the ``(C, H, W)`` of one example, ``options`` the
  ``model.options`` mapping (scalars and lists; searchable as ``model.options.<name>``);
- an ``nn.Module`` with at least one parameter;
- ``encode(x)`` takes x (B, C*H*W), **flat**, float32 in [0, 1] (reshape it yourself:
  ``x.view(-1, C, H, W)``), and returns ``(mu, logvar)``, each (B, latent_dim);
- ``decode(z)`` takes z (N, latent_dim), **2-D**: the wrapper flattens any leading dims
  (samples K, batch B) into N and restores them, and returns (N, C*H*W): Bernoulli or
  continuous-Bernoulli logits, or Gaussian means, as ``model.likelihood`` says.

The Gaussian likelihood's std (fixed, or learned per value with ``model.learn_std``) belongs
to the ``VAE`` wrapper, not to the user class; so do the reparameterisation, likelihoods,
objectives, metrics and checkpoints. A class that breaks the protocol is refused with a
``ConfigError`` when the ``VAE`` is built, on a probe batch of two examples, before any
training: a missing method, a wrong output shape, a constructor that refuses an option.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from vae_study.config.run import ModelConfig, is_import_path
from vae_study.core.likelihoods import (
    bernoulli_nll,
    continuous_bernoulli_mean,
    continuous_bernoulli_nll,
    gaussian_nll,
)
from vae_study.errors import ConfigError

Shape = tuple[int, int, int]  # (channels, height, width) of one example
DEFAULT_SHAPE: Shape = (1, 28, 28)  # MNIST; what a checkpoint without a shape was trained on

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    """Linear layers of ``widths``, an activation after each one."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        self.body = _mlp([math.prod(shape), *cfg.hidden], cfg.activation)
        self.mu = nn.Linear(cfg.hidden[-1], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[-1], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, H)
        return self.mu(h), self.logvar(h)  # (B, D) each


class MLPDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        widths = [cfg.latent_dim, *reversed(cfg.hidden)]
        self.body = _mlp(widths, cfg.activation)
        self.out = nn.Linear(widths[-1], math.prod(shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))  # (N, C*H*W)


# The conv architecture: 4x4 stride-2 convolutions halve the image (floor(s / 2)) while
# both sides stay at least MIN_CONV_SIDE, at most MAX_CONVS times; channels double from 32.
# On 28x28 that is MNIST's 28 -> 14 -> 7 (two convolutions); on 32x32, 32 -> 16 -> 8 -> 4.
MIN_CONV_SIDE = 4
MAX_CONVS = 5
FIRST_CHANNELS = 32


def conv_sides(shape: Shape) -> list[tuple[int, int]]:
    """(height, width) before each convolution and after the last: [(H, W), ..., (h, w)]."""
    sides = [(shape[1], shape[2])]
    while len(sides) <= MAX_CONVS and min(sides[-1]) // 2 >= MIN_CONV_SIDE:
        h, w = sides[-1]
        sides.append((h // 2, w // 2))
    return sides


def conv_channels(shape: Shape) -> list[int]:
    """Channels before each convolution and after the last: [C, 32, 64, ...]."""
    n = len(conv_sides(shape)) - 1
    return [shape[0]] + [FIRST_CHANNELS * 2**i for i in range(n)]


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (``conv_sides``), then a hidden layer of ``hidden[0]``."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        self.shape = tuple(shape)
        channels, (h, w) = conv_channels(shape), conv_sides(shape)[-1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), act()]  # halves H, W
        layers += [nn.Flatten(), nn.Linear(channels[-1] * h * w, cfg.hidden[0]), act()]
        self.conv = nn.Sequential(*layers)
        self.mu = nn.Linear(cfg.hidden[0], cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden[0], cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x.view(-1, *self.shape))  # (B, C*H*W) -> (B, C, H, W) -> (B, hidden)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """The encoder mirrored: transposed convolutions double the sides back to exactly
    (H, W), with an output padding of 1 where the encoder rounded an odd side down."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        channels, sides = conv_channels(shape), conv_sides(shape)
        self.start = (channels[-1], *sides[-1])  # (c, h, w) of the smallest feature map
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden[0]),
            act(),
            nn.Linear(cfg.hidden[0], math.prod(self.start)),
            act(),
        )
        layers: list[nn.Module] = []
        for i in range(len(sides) - 1, 0, -1):  # from the smallest map back to the image
            (h_out, w_out), (h_in, w_in) = sides[i - 1], sides[i]
            pad = (h_out - 2 * h_in, w_out - 2 * w_in)  # 0 or 1: an odd side
            layers.append(
                nn.ConvTranspose2d(
                    channels[i], channels[i - 1], 4, stride=2, padding=1, output_padding=pad
                )
            )
            if i > 1:
                layers.append(act())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, *self.start)  # (N, c, h, w)
        return self.deconv(h).flatten(1)  # (N, C, H, W) -> (N, C*H*W)


@runtime_checkable
class UserModel(Protocol):
    """What a user model (``model.arch: package.module:ClassName``) provides; built as
    ``ClassName(cfg: ModelConfig, shape: (C, H, W), **model.options)``, an ``nn.Module``."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> mu, logvar of q(z|x), each (B, latent_dim)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) -> likelihood parameters (N, C*H*W): logits or Gaussian means."""
        ...


def _short_path() -> str:
    entries = [p or "''" for p in sys.path]
    shown = entries[:6]
    more = f", ... ({len(entries) - len(shown)} more)" if len(entries) > len(shown) else ""
    return "[" + ", ".join(shown) + more + "]"


def import_arch(arch: str) -> type:
    """The class ``package.module:ClassName`` names, imported now; a ``ConfigError`` naming
    the module, the error and ``sys.path`` if it cannot be. ``SystemExit`` and
    ``KeyboardInterrupt`` raised by the module's code are such errors too: a module that
    calls ``sys.exit`` when imported must not end the study silently."""
    module_name, _, class_name = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # not found, or its code raised
        missing = isinstance(exc, ModuleNotFoundError) and (
            exc.name is not None and (module_name + ".").startswith(exc.name + ".")
        )
        fix = (
            f"sys.path is {_short_path()}; put the folder that holds the package on "
            "PYTHONPATH (or pip install it), on every Ray node for a study"
            if missing
            else "its code raised this when imported: fix the module (a module must not "
            "call sys.exit or input() when imported)"
        )
        raise ConfigError(
            f"model.arch: got {arch!r}, but module {module_name!r} cannot be imported "
            f"({type(exc).__name__}: {str(exc)[:200]}); {fix}"
        ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        found = "no such name" if cls is None else f"a {type(cls).__name__}, not a class"
        raise ConfigError(
            f"model.arch: got {arch!r}, but module {module_name!r} "
            f"({getattr(module, '__file__', '?')}) has {found} {class_name!r}; name a class "
            "defined in it as package.module:ClassName"
        )
    return cls


def _protocol_error(arch: str, what: str, fix: str) -> ConfigError:
    return ConfigError(
        f"model.arch: {arch} does not follow vae_study's model protocol: {what}; {fix} (see "
        "the vae_study.core.model docstring: Class(cfg, shape, **options), an nn.Module with "
        "encode(x (B, C*H*W)) -> (mu, logvar) each (B, latent_dim) and decode(z (N, "
        "latent_dim)) -> (N, C*H*W))"
    )


def build_user_model(cfg: ModelConfig, shape: Shape) -> nn.Module:
    """``cfg.arch``'s class built with ``(cfg, shape, **cfg.options)`` and checked."""
    cls = import_arch(cfg.arch)
    arch = cfg.arch
    missing = [m for m in ("encode", "decode") if not callable(getattr(cls, m, None))]
    if missing:
        raise _protocol_error(
            arch, f"the class has no {' and no '.join(missing)} method", "define it"
        )
    if not issubclass(cls, nn.Module):
        raise _protocol_error(
            arch, "the class is not a torch.nn.Module", "subclass torch.nn.Module"
        )
    try:
        net = cls(cfg, tuple(shape), **dict(cfg.options))
    except TypeError as exc:
        raise _protocol_error(
            arch,
            f"building it as {cls.__name__}(cfg, shape={tuple(shape)}, "
            f"**{dict(cfg.options)!r}) raised TypeError: {str(exc)[:200]}",
            "accept (cfg, shape) and every key of model.options as keyword arguments",
        ) from None
    except (Exception, SystemExit) as exc:  # the class refuses these options or shape
        raise ConfigError(
            f"model.arch: building {arch} as {cls.__name__}(cfg, shape={tuple(shape)}, "
            f"**{dict(cfg.options)!r}) raised {type(exc).__name__}: {str(exc)[:200]}; change "
            "model.options (or the data) to what the class accepts"
        ) from None
    if not any(True for _ in net.parameters()):
        raise _protocol_error(arch, "the model has no parameters", "give it some layers")
    return net


def _probe(vae: VAE) -> None:
    """One probe batch through a user model: the protocol's shapes, before any training."""
    arch, d, n = vae.cfg.arch, vae.latent_dim, vae.num_values
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    x = torch.linspace(0.0, 1.0, 2 * n, device=device).view(2, n)  # (2, C*H*W), no RNG used
    try:
        with torch.no_grad():
            encoded = vae.net.encode(x)
            ok = (
                isinstance(encoded, tuple | list)
                and len(encoded) == 2
                and all(isinstance(t, torch.Tensor) for t in encoded)
            )
            if not ok:
                raise _protocol_error(
                    arch,
                    f"encode(x (2, {n})) returned {_describe(encoded)}, not a pair (mu, logvar)",
                    "return a tuple of two tensors",
                )
            for name, t in zip(("mu", "logvar"), encoded, strict=True):
                if tuple(t.shape) != (2, d):
                    raise _protocol_error(
                        arch,
                        f"encode(x (2, {n})) returned {name} of shape {tuple(t.shape)}, "
                        f"expected (2, {d}) = (batch, model.latent_dim)",
                        "return mu and logvar of shape (B, cfg.latent_dim)",
                    )
            out = vae.net.decode(torch.zeros(3, d, device=device))
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, n):
                raise _protocol_error(
                    arch,
                    f"decode(z (3, {d})) returned {_describe(out)}, expected (3, {n}) = "
                    f"(N, C*H*W) for shape {vae.shape}",
                    "return one value per pixel and channel, flat",
                )
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:
        raise _protocol_error(
            arch,
            f"a probe batch x (2, {n}) failed in encode or decode ({type(exc).__name__}: "
            f"{str(exc)[:200]})",
            f"encode must take x flat, (B, C*H*W) with (C, H, W) = {vae.shape}",
        ) from None
    finally:
        vae.train(was_training)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}: " + ", ".join(
            _describe(v) for v in value
        )
    return f"a {type(value).__name__}"


def check_models(configs: Iterable[ModelConfig], shape: Shape) -> None:
    """Build each user model configuration once for ``shape``: imported, built and probed,
    what a study does before any trial starts (conv: only that the images are large enough;
    mlp needs no check)."""
    seen: list[ModelConfig] = []
    for cfg in configs:
        if cfg.arch == "conv" and len(conv_sides(shape)) < 2:
            VAE(cfg, shape)  # refused: the message says why
        if is_import_path(cfg.arch) and cfg not in seen:
            seen.append(cfg)
            VAE(cfg, shape)


class VAE(nn.Module):
    """A Gaussian-latent VAE over images of ``shape`` (C, H, W), flattened to C*H*W values."""

    def __init__(self, cfg: ModelConfig, shape: Shape = DEFAULT_SHAPE) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self.shape: Shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.num_values = math.prod(self.shape)
        self.net: nn.Module | None = None  # a user model, which encodes and decodes
        if is_import_path(cfg.arch):
            self.net = build_user_model(cfg, self.shape)
        elif cfg.arch == "conv":
            if len(conv_sides(self.shape)) < 2:
                side = 2 * MIN_CONV_SIDE
                raise ConfigError(
                    f"model.arch: conv on images of {self.shape[1]}x{self.shape[2]}; its "
                    f"stride-2 convolutions need both sides >= {side}: use model.arch: mlp "
                    "(or your own model) for images this small"
                )
            self.encoder: nn.Module = ConvEncoder(cfg, self.shape)
            self.decoder: nn.Module = ConvDecoder(cfg, self.shape)
        else:
            self.encoder = MLPEncoder(cfg, self.shape)
            self.decoder = MLPDecoder(cfg, self.shape)
        if cfg.likelihood == "gaussian":
            log_std = torch.full((self.num_values,), math.log(cfg.gaussian_std))
            if cfg.learn_std:
                self.log_std = nn.Parameter(log_std)  # one learned std per value
            else:
                self.register_buffer("log_std", log_std)
        if self.net is not None:
            _probe(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> mu, logvar of q(z|x), each (B, D)."""
        if self.net is not None:
            return self.net.encode(x)
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z_k = mu + sigma * eps_k, eps_k ~ N(0, I): (B, D) -> (K, B, D)."""
        eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> decoder output (..., C*H*W): Bernoulli logits or Gaussian means."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)  # (N, D)
        out = self.net.decode(flat) if self.net is not None else self.decoder(flat)
        return out.reshape(*lead, self.num_values)

    def forward(
        self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C*H*W) -> (decoder output (K, B, C*H*W), mu, logvar, z (K, B, D))."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, k, generator)
        return self.decode(z), mu, logvar, z

    def neg_log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) summed over values, in nats: x (B, C*H*W), out (..., B, C*H*W) -> (..., B).

        Bernoulli: the binary cross-entropy computed from logits (stable for any logit); on
        grey levels this is the cross-entropy of pytorch/examples, the 105-nat anchor, and
        not a likelihood. Continuous Bernoulli and Gaussian: densities of dequantised pixels.
        """
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        if self.cfg.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_nll(out, x)
        return gaussian_nll(out, x, self.log_std, floor=self.cfg.std_floor)

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: (..., B)."""
        return -self.neg_log_likelihood(x, out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] (for pictures): sigmoid(logits) or the mean."""
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.cfg.likelihood == "continuous_bernoulli":
            return continuous_bernoulli_mean(out)
        return out.clamp(0.0, 1.0)
