"""Fused members: several configurations of one architecture trained at once.

A *pack* is M members that share every shape-determining key (the data section, the model
section but ``gaussian_std``, and ``train.k``, ``objective``, ``batch_size``, ``epochs``,
``precision``, ``device``) and differ in ``train.beta``, ``train.seed``, ``train.lr``,
``model.gaussian_std`` and the ``eval`` section. ``fit_pack`` trains them as one batched
model: the weights of each layer are stacked to (M, out, in) and every matmul is one
``torch.baddbmm`` over the members, so M small models make one large enough to keep a CPU's
vector units busy (HFTA, Wang et al. 2021; PyTorch's model-ensembling recipe). That is the
MLP's form (``model.arch: mlp``, ``StackedMLP``). Conv and user models run their own
``encode`` and ``decode`` on each member's row of the stacked weights through
``torch.func.functional_call``, vectorised by ``torch.func.vmap`` (``StackedVmap``), when a
probe batch shows vmap runs them as they run alone; else the members train one after another
in the same call, each by ``train.fit`` (``fusion_mode`` says which and why).

Each member is still a run of its own, equal to ``train.fit`` of its configuration:

- its ``VAE`` is made by ``train.make_model`` (same seed, same initial weights); its
  parameters become views of its row of the stacked weights, so the member's model, its
  ``train.make_optimizer`` Adam and its checkpoint are those of a single run. Adam is
  torch's own (fused) step, once per member with the member's lr, on the views: the same
  update, the same state dict, bit for bit; a hand-written Adam over the stack would be a
  dozen elementwise passes where torch's fused kernel makes one;
- its own ``torch.Generator`` draws, in ``fit``'s order, its batch permutation, its dynamic
  binarization or dequantisation noise (``data.Batches``) and its reparameterisation noise;
- the loss is the sum over members of each member's batch-mean loss, so each member's
  gradient is its single-run gradient (``objectives.compute_terms`` computes the terms);
- it writes the files ``fit`` writes, in its own folder, so ``fit``, ``report`` and a resume
  take a member's folder as a single run's. A member that diverges is frozen (no update),
  reported as ``TrainingDiverged`` in its slot, and keeps its last good checkpoint; the others
  go on. Its numbers do not depend on M or on its pack-mates, up to float rounding: a batched
  matmul kernel is not bit-for-bit the single one. A member training alone (M = 1, or the
  last one left) goes through ``train.train_epoch`` itself: today's trainer, bit for bit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae_study import files, marker, timing
from vae_study import metrics as M
from vae_study.config.run import RunConfig
from vae_study.config.schema import to_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.core import checkpoint as ckpt
from vae_study.core import train as T
from vae_study.core.architectures import DEFAULT_SHAPE
from vae_study.core.batches import Batches
from vae_study.core.data import load_datasets
from vae_study.core.model import VAE
from vae_study.core.objectives import compute_terms
from vae_study.core.splits import Datasets
from vae_study.errors import ConfigError, TrainingDiverged

# The keys members of one pack may differ in: per-member scalars. Every other key is shared.
MEMBER_KEYS = ("train.beta", "train.seed", "train.lr", "model.gaussian_std")
MEMBER_PREFIXES = ("eval.",)  # evaluation happens per member, after training

log = logging.getLogger("vae_study")

# on_epoch(member index, metrics, the member's checkpoint folder), after each member epoch.
PackEpochHook = Callable[[int, dict[str, float], Path | None], None]


def check_packable(configs: Sequence[RunConfig]) -> None:
    """Refuse configurations that cannot train as one pack, naming the first shared key that
    differs (in config order) and the member that differs."""
    if not configs:
        raise ConfigError("fit_pack: got no configurations; give at least one")
    first = T.flatten_keys(to_dict(configs[0]))
    for i, config in enumerate(configs[1:], start=1):
        flat = T.flatten_keys(to_dict(config))
        # Every key either has: model.options.<name> of a user model included (a key one
        # member sets and the other leaves to the class's default differs too).
        for key in [*first, *(k for k in flat if k not in first)]:
            if key in MEMBER_KEYS or key.startswith(MEMBER_PREFIXES):
                continue
            if flat.get(key) != first.get(key):
                raise ConfigError(
                    f"{key}: member {i} has {_short(flat.get(key))}, member 0 has "
                    f"{_short(first.get(key))}; members of a pack share every key but "
                    f"{', '.join(MEMBER_KEYS)} and eval.*; train them in separate packs"
                )


STACKED = "stacked"  # model.arch: mlp: each layer one batched matmul over the members
VMAP = "vmap"  # conv and user models: torch.func.vmap of the member's own encode and decode
SEQUENTIAL = "sequential"  # what vmap cannot run: the members one after another, each fit
PROBE_RTOL = 1e-4  # vmapped outputs against each member's own, on the probe batch


def fusion_mode(
    configs: Sequence[RunConfig], shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> tuple[str, str]:
    """How ``fit_pack`` trains these members on examples of ``shape``, and why:

    - ``stacked``: MLP members, each layer one batched matmul (``StackedMLP``);
    - ``vmap``: conv and user models that ``torch.func.vmap`` runs, as found on a probe batch
      (outputs equal to each member's own, gradients reaching every parameter):
      ``StackedVmap``;
    - ``sequential``: the others (random ops or buffers in the model, an op vmap lacks...):
      each member trained by ``train.fit`` in turn, in the same call, the reason given.
    """
    check_packable(configs)
    arch = configs[0].model.arch
    if arch == "mlp":
        return STACKED, "model.arch: mlp: the layers' weights stacked over the members"
    if len(configs) == 1:
        return SEQUENTIAL, "one member: trained by train.fit"
    reason = _vmap_probe(configs[0], shape)
    if reason is None:
        return VMAP, f"model.arch: {arch}: torch.func.vmap over the members passed the probe"
    return SEQUENTIAL, (
        f"model.arch: {arch}: torch.func.vmap cannot run it ({reason}); the members train one "
        "after another, each as train.fit would"
    )


def _vmap_probe(config: RunConfig, shape: tuple[int, int, int]) -> str | None:
    """None if two members of ``config`` run under ``StackedVmap`` as they run alone (on
    the CPU, a batch of 3, K = 2); else what went wrong."""
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
    # log_std is the likelihood's, used outside encode and decode (``_Stack.log_std``).
    missing = [n for n, p in stack.params.items() if p.grad is None and n != "log_std"]
    if missing:
        return f"no gradient reaches {', '.join(missing[:3])} under vmap"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Stack:
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


class StackedMLP(_Stack):
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


class StackedVmap(_Stack):
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


def _release(model: VAE) -> None:
    """A member leaving the pack: its parameters own their memory again."""
    for p in model.parameters():
        if p.untyped_storage().nbytes() != p.numel() * p.element_size():  # a view of a stack
            p.data = p.data.clone()


class _Member:
    """One member's run: what ``fit`` keeps in its locals."""

    def __init__(
        self,
        index: int,
        config: RunConfig,
        out: Path | None,
        device: torch.device,
        shape: tuple[int, int, int],
    ) -> None:
        self.index = index
        self.config = config
        self.out = out
        self.ckpt_dir = out / T.CHECKPOINT_DIR if out is not None else None
        self.model = T.make_model(config, device, shape)
        self.optimizer = T.make_optimizer(self.model, config.train)
        self.generator = torch.Generator(device).manual_seed(config.train.seed)
        self.history: list[dict[str, float]] = []
        self.epoch = 0  # the last epoch trained
        self.final: dict[str, Any] = {}
        self.failed: TrainingDiverged | None = None

    def resume(self, device: torch.device) -> None:
        """Continue this member's checkpoint, as ``fit`` does; write its starting files."""
        if ckpt.exists(self.ckpt_dir):
            assert self.ckpt_dir is not None
            state = ckpt.load(self.ckpt_dir, map_location=device)
            T.check_resumable(state.config, self.config, self.ckpt_dir)
            T.check_shape(state.shape, self.model.shape, self.ckpt_dir)
            self.model.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
            T.restore_generator(
                self.generator, state.generator, self.config.train.seed, state.epoch
            )
            self.history = [h for h in state.history if h[M.EPOCH] <= state.epoch]
        if self.out is not None:
            marker.write(self.out, marker.FIT)
            write_yaml(self.out / T.CONFIG_FILE, to_dict(self.config))
            T.rewrite_metrics(self.out / T.METRICS_FILE, self.history)
        self.epoch = int(self.history[-1][M.EPOCH]) if self.history else 0

    def save(self, row: dict[str, float]) -> None:
        """The checkpoint of the epoch just trained and its metrics line, as ``fit`` writes."""
        if self.ckpt_dir is None:
            return
        weights = self.model.state_dict()
        for key, value in weights.items():  # views of the stack: save this member's row only
            weights[key] = value.clone()
        with files.interrupts_deferred():
            ckpt.save(
                self.ckpt_dir,
                ckpt.TrainingState(
                    epoch=self.epoch,
                    model=weights,
                    optimizer=self.optimizer.state_dict(),
                    generator=self.generator.get_state(),
                    config=to_dict(self.config),
                    history=self.history,
                    shape=self.model.shape,
                ),
            )
            with open(self.out / T.METRICS_FILE, "a", encoding="utf-8") as f:  # type: ignore
                f.write(json.dumps(row) + "\n")


def fit_pack(
    configs: Sequence[RunConfig],
    *,
    out_dirs: Sequence[str | Path] | None = None,
    data: Datasets | None = None,
    on_epoch: PackEpochHook | None = None,
    final_eval: bool = True,
) -> list[T.FitResult | TrainingDiverged]:
    """Train ``configs`` as one pack; per member, what ``train.fit`` would return.

    out_dirs: one output folder per member, laid out as ``fit``'s (None: nothing written);
    a member with a checkpoint there continues it exactly, whatever epoch it stopped at.
    on_epoch(member index, metrics, checkpoint folder) runs after each member epoch, once
    every member's checkpoint of that epoch is written. A member whose loss or validation
    metrics become NaN or infinite gets its ``TrainingDiverged`` in its slot (not raised).
    """
    started = time.perf_counter()
    check_packable(configs)
    if out_dirs is not None and len(out_dirs) != len(configs):
        raise ConfigError(
            f"fit_pack: got {len(out_dirs)} out_dirs for {len(configs)} "
            "configurations; give one folder per member"
        )
    outs = [Path(d) for d in out_dirs] if out_dirs is not None else [None] * len(configs)
    named = [o.resolve() for o in outs if o is not None]
    if len(set(named)) != len(named):
        raise ConfigError("fit_pack: two members share an output folder; give each its own")
    for out in outs:
        if out is not None:
            T.check_output_folder(out)
    first = configs[0]
    device = T.resolve_device(first.train.device)
    if data is None:
        data = load_datasets(first.data, dequantize=first.dequantized, device=device)
    else:
        data = data.to(device)

    mode, why = fusion_mode(configs, data.shape)
    log.info("fit_pack: %d members, %s: %s", len(configs), mode, why)
    if mode == SEQUENTIAL:
        return [
            _fit_alone(j, c, o, data, on_epoch, final_eval)
            for j, (c, o) in enumerate(zip(configs, outs, strict=True))
        ]
    members = [
        _Member(j, c, o, device, data.shape)
        for j, (c, o) in enumerate(zip(configs, outs, strict=True))
    ]
    results: list[T.FitResult | TrainingDiverged | None] = [None] * len(members)
    for member in members:
        member.resume(device)
        if member.epoch >= first.train.epochs:  # nothing to train: fit's tail does the rest
            results[member.index] = _fit_alone(
                member.index, member.config, member.out, data, on_epoch, final_eval
            )
    training = [m for m in members if results[m.index] is None]
    while training:
        t0 = time.perf_counter()
        _train_epoch(training, data, StackedVmap if mode == VMAP else StackedMLP)
        seconds = time.perf_counter() - t0  # the pack's epoch: what each member waited
        for member in training:  # every checkpoint of the epoch, then the hooks
            if member.failed is None:
                member.history[-1][M.EPOCH_SECONDS] = seconds
                member.save(member.history[-1])
        for member in training:
            if member.failed is None and member.epoch == first.train.epochs and final_eval:
                try:
                    member.final = T.evaluate_final(
                        member.model, data, member.config, member.out, member.epoch, started, None
                    )
                except TrainingDiverged as exc:
                    member.failed = exc
            if member.failed is None and on_epoch is not None:
                on_epoch(member.index, {**member.history[-1], **member.final}, member.ckpt_dir)
        for member in training:
            if member.failed is not None or member.epoch == first.train.epochs:
                _release(member.model)
                results[member.index] = member.failed or T.FitResult(
                    model=member.model, history=member.history, final=member.final
                )
        training = [m for m in training if results[m.index] is None]
    return results  # type: ignore[return-value]


def _fit_alone(
    index: int,
    config: RunConfig,
    out: Path | None,
    data: Datasets,
    on_epoch: PackEpochHook | None,
    final_eval: bool,
) -> T.FitResult | TrainingDiverged:
    """A member trained (or, past its last epoch, reported or evaluated) by ``fit``."""
    hook = None if on_epoch is None else (lambda row, folder: on_epoch(index, row, folder))
    try:
        return T.fit(config, out_dir=out, data=data, on_epoch=hook, final_eval=final_eval)
    except TrainingDiverged as exc:
        return exc


def _train_epoch(training: list[_Member], data: Datasets, stack: type[_Stack]) -> None:
    """One epoch of every member in ``training``: its next epoch, which may differ between
    members resumed from different checkpoints. Appends each surviving member's history row
    (training means and validation terms); sets ``failed`` on a member that diverges.

    A member alone is trained by ``train.train_epoch`` itself (today's trainer, bit for bit,
    at its speed); two or more by the stacked model."""
    for m in training:
        m.epoch += 1
        m.model.train()
    with timing.phase(
        "train_epoch", epoch=training[0].epoch, examples=len(data.train), members=len(training)
    ):
        rows = (
            [_train_alone(training[0], data)]
            if len(training) == 1
            else _train_stacked(training, data, stack)
        )
    for m, row in zip(training, rows, strict=True):
        if row is None:
            continue
        try:
            with timing.phase("validation", epoch=m.epoch, examples=len(data.val)):
                row.update(T.validation_terms(m.model, data, m.epoch))
        except TrainingDiverged as exc:
            m.failed = exc
            continue
        m.history.append(row)


def _train_alone(m: _Member, data: Datasets) -> dict[str, float] | None:
    _release(m.model)
    batches = Batches(
        data.train,
        m.config.train.batch_size,
        shuffle=True,
        noise=data.train_noise,
        generator=m.generator,
    )
    try:
        return {
            M.EPOCH: m.epoch,
            **T.train_epoch(
                m.model, m.optimizer, batches, m.config.train, m.epoch, generator=m.generator
            ),
        }
    except TrainingDiverged as exc:
        m.failed = exc
        return None


def _train_stacked(
    training: list[_Member], data: Datasets, stack_type: type[_Stack]
) -> list[dict[str, float] | None]:
    """The training half of ``_train_epoch`` for two or more members: one batched step per
    batch, each member's own Adam step; a member whose loss is NaN or infinite is frozen."""
    stack = stack_type([m.model for m in training], [m.generator for m in training])
    cfg = training[0].config.train
    device = data.train.x.device
    n_members = len(training)
    batches = [
        iter(
            Batches(
                data.train,
                cfg.batch_size,
                shuffle=True,
                noise=data.train_noise,
                generator=m.generator,
            )
        )
        for m in training
    ]
    n_batches = -(-len(data.train) // cfg.batch_size)
    epochs = [m.epoch for m in training]
    betas = torch.tensor([m.config.train.beta for m in training], device=device)[:, None]
    unit_beta = all(m.config.train.beta == 1.0 for m in training)
    compute_dtype = T.COMPUTE_DTYPES[cfg.precision]
    # A CPU reads a loss for free: check every batch, so a member is frozen at its first
    # bad batch. A GPU syncs on a read: check every CHECK_EVERY batches, as train_epoch does
    # (a diverged member's weights after its bad batch are then never saved or returned).
    check_every = 1 if device.type == "cpu" else T.CHECK_EVERY
    live = torch.ones(n_members, dtype=torch.bool, device=device)
    live_host = [True] * n_members
    stats = torch.empty(n_batches, n_members, 3, device=device)  # per batch, member: loss, R, D
    sizes = torch.empty(n_batches, dtype=torch.float64)
    checked = 0
    for i in range(n_batches):
        x = torch.stack([next(b) for b in batches])  # (M, B, P)
        if cfg.objective == "elbo":
            terms = compute_terms(
                stack,
                x,
                k=cfg.k,
                objective="elbo",  # type: ignore[arg-type]
                compute_dtype=compute_dtype,
            )
            loss = terms.loss if unit_beta else terms.distortion + betas * terms.rate
        else:  # beta inside the importance weights, per member: (M, 1) against (K, M, B)
            terms = compute_terms(
                stack,
                x,
                k=cfg.k,
                beta=betas,  # type: ignore[arg-type]
                objective="iwae",
                compute_dtype=compute_dtype,
            )
            loss = terms.loss
        loss_means = loss.mean(1)  # (M,): each member's batch-mean loss
        with torch.no_grad():
            torch.stack(
                (loss_means, terms.rate.mean(1), terms.distortion.mean(1)), dim=1, out=stats[i]
            )
        sizes[i] = x.shape[1]
        if (i + 1) % check_every == 0 or i + 1 == n_batches:
            for j, exc in _diverged(
                stats[checked : i + 1, :, 0], live_host, epochs, first_batch=checked + 1
            ):
                training[j].failed, live_host[j], live[j] = exc, False, False
            checked = i + 1
        if not any(live_host):
            break
        stack.zero_grad()
        # Each member's gradient is that of its own batch mean; a diverged one's is excluded.
        torch.where(live, loss_means, 0.0).sum().backward()
        for j, m in enumerate(training):
            if live_host[j]:
                stack.set_member_grads(j)
                T.schedule_step(m.optimizer, m.config.train, epochs[j], i, n_batches)
                m.optimizer.step()
    stack.zero_grad()
    rows: list[dict[str, float] | None] = []
    for j, m in enumerate(training):
        m.model.zero_grad(set_to_none=True)
        if not live_host[j]:
            rows.append(None)
            continue
        means = (stats[:, j].double().cpu() * sizes[:, None]).sum(0) / sizes.sum()
        loss_mean, rate_mean, dist_mean = means.tolist()
        rows.append(
            {
                M.EPOCH: m.epoch,
                M.TRAIN_LOSS: loss_mean,
                M.TRAIN_RATE: rate_mean,
                M.TRAIN_DISTORTION: dist_mean,
            }
        )
    return rows


def _diverged(
    losses: torch.Tensor, live: list[bool], epochs: list[int], first_batch: int
) -> list[tuple[int, TrainingDiverged]]:
    """Live members with a non-finite loss among ``losses`` (batches, M), each with the
    ``TrainingDiverged`` of its first bad batch (as ``train_epoch`` would raise it)."""
    losses = losses.cpu()
    bad = ~torch.isfinite(losses)
    out = []
    for j in bad.any(0).nonzero().flatten().tolist():
        if live[j]:
            row = int(bad[:, j].nonzero()[0, 0])
            out.append((j, TrainingDiverged(epochs[j], first_batch + row, float(losses[row, j]))))
    return out
