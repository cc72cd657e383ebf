"""User models by import path (``model.arch: package.module:ClassName``): imported
(``importlib``) only when a model is built, built with ``(cfg, shape, **model.options)`` and
probed on a batch of two examples, before any training, against the protocol of
``vae_study.core.model`` (``UserModel``). A class that breaks it is refused with a
``ConfigError`` that names the rule and the fix.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vae_study.config.run import ModelConfig
from vae_study.core.architectures import Shape
from vae_study.errors import ConfigError

if TYPE_CHECKING:
    from vae_study.core.model import VAE


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


def probe_user_model(vae: VAE) -> None:
    """One probe batch through ``vae``'s user model (``vae.net``): the protocol's shapes,
    before any training; a ``ConfigError`` names what breaks it."""
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
