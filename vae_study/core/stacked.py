"""Stacked models: the VAEs of a pack's members as one batched model.

Each parameter of the members' ``VAE`` is stacked to (M, ...), and each member's parameters
become views of its row, so the member's own model, Adam and checkpoint read and write the
stack. ``StackedMLP`` runs every linear layer as one batched matmul over the members
(``BatchedLinear``; HFTA, Wang et al. 2021); ``StackedVmap`` runs the member's own
``encode`` and ``decode`` on its row by ``torch.func.functional_call``, vectorised by
``torch.func.vmap`` (PyTorch's model-ensembling recipe), for conv and user models that
``vmap_probe`` finds it runs as they run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vae_study.config.run import RunConfig
from vae_study.core.model import VAE


class Stack:
    """The members' VAEs as one batched model: each parameter stacked to (M, ...).

    Quacks like ``VAE`` for ``objectives.compute_terms`` with the members as an extra
    leading batch axis (P = C*H*W values an example): x (M, B, P) -> mu, logvar (M, B, D)
    -> z (K, M, B, D) -> decoder output (K, M, B, P) -> terms (M, B). On construction each
    member's parameters are made views of its row (``p.data = stacked[j]``), so the member's
    own ``VAE`` and optimizer read and write the stacked weights, and ``.grad`` of a stacked
    leaf gives each member's. Subclasses say how the stack encodes and decodes.
    """

    def __init__(self, models: Sequence[VAE], generators: Sequence[torch.Generator]) -> None:
        template = models[0]
        self.cfg = template.cfg
        self.latent_dim = template.latent_dim
        self.generators = list(generators)
        self.names = [name for name, _ in template.named_parameters()]
        self.params: dict[str, torch.Tensor] = {}
        for name in self.names:
            rows = [m.get_parameter(name).detach() for m in models]
            self.params[name] = torch.stack(rows).requires_grad_()  # (M, ...) leaf
            for j, m in enumerate(models):
                m.get_parameter(name).data = self.params[name].detach()[j]
        self.members = [[m.get_parameter(name) for name in self.names] for m in models]
        self.buffers = {
            name: torch.stack([m.get_buffer(name) for m in models])
            for name, _ in template.named_buffers()
        }

    @property
    def log_std(self) -> torch.Tensor:
        """The Gaussian likelihood's per-member log std, (M, 1, P) against (K, M, B, P)."""
        stacked = self.params.get("log_std")
        return (stacked if stacked is not None else self.buffers["log_std"]).unsqueeze(1)

    def reparameterize(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        k: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps drawn per member from its own generator, exactly as
        ``VAE.reparameterize`` draws it: (M, B, D) -> (K, M, B, D). ``generator`` is unused."""
        eps = torch.stack(
            [
                torch.randn((k, *mu.shape[1:]), device=mu.device, dtype=mu.dtype, generator=g)
                for g in self.generators
            ],
            dim=1,
        )
        return mu + torch.exp(0.5 * logvar) * eps

    def neg_log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x|z): x (M, B, P), out (K, M, B, P) -> (K, M, B); VAE's dispatch.

        With K = 1, out[0] (M, B, P) against x (M, B, P): ``bernoulli_nll`` then works
        in blocks of a few members, as it does along K in a single run, so its temporaries
        stay in cache instead of spanning the whole pack."""
        if out.shape[0] == 1:
            return VAE.neg_log_likelihood(self, x, out[0]).unsqueeze(0)  # type: ignore[arg-type]
        return VAE.neg_log_likelihood(self, x, out)  # type: ignore[arg-type]

    def set_member_grads(self, j: int) -> None:
        """Member j's parameters get their gradients: views of the stacked leaves' rows."""
        for name, p in zip(self.names, self.members[j], strict=True):
            grad = self.params[name].grad
            p.grad = None if grad is None else grad[j]

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


class StackedMLP(Stack):
    """MLP members: every layer one batched matmul over the members (``BatchedLinear``)."""

    def __init__(self, models: Sequence[VAE], generators: Sequence[torch.Generator]) -> None:
        super().__init__(models, generators)
        template = models[0]
        self.encoder_body = _linear_names(template.encoder.body, "encoder.body")
        self.decoder_body = _linear_names(template.decoder.body, "decoder.body")
        self.activation = template.encoder.body[1]  # stateless: the same for every member

    def _linear(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """nn.Linear per member: h (M, N, in) -> (M, N, out)."""
        return BatchedLinear.apply(h, self.params[name + ".weight"], self.params[name + ".bias"])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x  # (M, B, P)
        for name in self.encoder_body:
            h = self.activation(self._linear(name, h))
        return self._linear("encoder.mu", h), self._linear("encoder.logvar", h)  # (M, B, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (K, M, B, D) -> decoder output (K, M, B, P)."""
        k, m, b, d = z.shape
        h = z.transpose(0, 1).reshape(m, k * b, d)  # (M, K*B, D); a copy only when K > 1
        for name in self.decoder_body:
            h = self.activation(self._linear(name, h))
        out = self._linear("decoder.out", h)  # (M, K*B, P)
        return out.view(m, k, b, -1).transpose(0, 1)


class StackedVmap(Stack):
    """Any other members (conv, a user model): the member's own ``VAE.encode`` and
    ``VAE.decode`` run on its row of the stacked parameters by ``torch.func.functional_call``,
    vectorised over the members by ``torch.func.vmap`` (PyTorch's model-ensembling recipe)."""

    def __init__(self, models: Sequence[VAE], generators: Sequence[torch.Generator]) -> None:
        super().__init__(models, generators)
        from torch.func import functional_call, vmap

        # Member 0's module runs every member: functional_call swaps in each member's row of
        # the stacked tensors for the call and puts its own back after.
        methods = {name: _Method(models[0], name) for name in ("encode", "decode")}

        def call(name: str, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            prefixed = {f"vae.{k}": v for k, v in {**params, **buffers}.items()}
            return functional_call(methods[name], prefixed, (x,))

        # in_dims: every stacked parameter and buffer, and the input, split along dim 0.
        self._encode = vmap(lambda p, b, x: call("encode", p, b, x))
        self._decode = vmap(lambda p, b, z: call("decode", p, b, z))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(self.params, self.buffers, x)  # (M, B, P) -> (M, B, D) each

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (K, M, B, D) -> decoder output (K, M, B, P)."""
        k, m, b, d = z.shape
        h = z.transpose(0, 1).reshape(m, k * b, d)  # (M, K*B, D)
        out = self._decode(self.params, self.buffers, h)  # (M, K*B, P)
        return out.view(m, k, b, -1).transpose(0, 1)


class _Method(nn.Module):
    """``vae.<name>`` as a module's forward, for ``functional_call`` (which calls forward)."""

    def __init__(self, vae: VAE, name: str) -> None:
        super().__init__()
        self.vae = vae
        self.name = name

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.vae, self.name)(x)


class BatchedLinear(torch.autograd.Function):
    """h (M, N, in) @ weight (M, out, in)^T + bias (M, out): ``nn.Linear`` per member.

    Autograd's own backward of ``baddbmm(bias, h, weight.transpose(1, 2))`` gives the
    weight's gradient transposed, (M, in, out), which ``AccumulateGrad`` then copies into the
    weight's layout: a pass over every weight each step, 8% of the small model's time. This
    backward computes it in that layout, as ``nn.Linear``'s does: grad_W = g^T h.
    """

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        dtype = grad.dtype  # under autocast (bfloat16) the output's: cast back per input
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # not for the first layer: the data need none
            grad_h = torch.bmm(grad, weight.to(dtype)).to(h.dtype)  # (M, N, in)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad.transpose(1, 2), h.to(dtype)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(1).to(weight.dtype)  # (M, out)
        return grad_h, grad_w, grad_b


def _linear_names(body: nn.Sequential, prefix: str) -> list[str]:
    return [f"{prefix}.{i}" for i, layer in enumerate(body) if isinstance(layer, nn.Linear)]


PROBE_RTOL = 1e-4  # vmapped outputs against each member's own, on the probe batch


def vmap_probe(config: RunConfig, shape: tuple[int, int, int]) -> str | None:
    """None if two members of ``config`` run under ``StackedVmap`` as they run alone (on
    the CPU, a batch of 3, K = 2: outputs equal to each member's own, gradients reaching
    every parameter); else what went wrong."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream left as it was
        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)  # two members with different weights
            models.append(VAE(config.model, shape))
    extra = [n for m in models[:1] for n, _ in m.named_buffers() if n != "log_std"]
    if extra:
        return f"it has buffers ({', '.join(extra[:3])}), which vmap would not update per member"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, models[0].num_values, generator=g)  # (M, B, P)
    z = torch.randn(2, 2, 3, config.model.latent_dim, generator=g)  # (K, M, B, D)
    with torch.no_grad():
        alone = [(*m.encode(x[j]), m.decode(z[:, j])) for j, m in enumerate(models)]
    try:
        stack = StackedVmap(models, [torch.Generator() for _ in models])
        mu, logvar = stack.encode(x)
        out = stack.decode(z)
        (mu.sum() + logvar.sum() + out.sum()).backward()
    except Exception as exc:  # whatever vmap refuses: randomness, in-place ops, data-dependent
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    got = [(mu[j], logvar[j], out[:, j]) for j in range(len(models))]
    for a, b in zip(alone, got, strict=True):
        for t_alone, t_vmap in zip(a, b, strict=True):
            if not torch.allclose(t_vmap.detach(), t_alone, rtol=PROBE_RTOL, atol=1e-5):
                return "its vmapped outputs differ from the members' own"
    # log_std is the likelihood's, used outside encode and decode (``Stack.log_std``).
    missing = [n for n, p in stack.params.items() if p.grad is None and n != "log_std"]
    if missing:
        return f"no gradient reaches {', '.join(missing[:3])} under vmap"
    return None
