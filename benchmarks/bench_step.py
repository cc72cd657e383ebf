"""Where one training step of a study's base configuration goes, against its floor.

``bench_trial.py`` splits a whole trial into parts; this splits the part that dominates it,
a training step (one batch), into what any step must do, each timed by wall clock in this
process at the trial's one thread, on the study's data (``VAE_STUDY_DATA``; random grey
levels without it):

- the step as the trainer takes it (``core.batches.Batches``, ``core.objectives.compute_terms``,
  backward, the trainer's Adam), split into the batch, the forward, the backward and Adam;
- alone, on the same shapes: the step's matrix products (forward, weight and input
  gradients, as autograd calls them), and the Bernoulli likelihood with its gradient;
- the floor: the step's matrix-product FLOPs (counted from the shapes, as ``bench_trial``
  counts them) over the float32 GEMM rate of a 2048^3 product measured in this run.

The last line is

    bench_step: K=1 <step>x, unavoidable <u>x | K=5 ...

the step's time and the time of the products, Adam and the batch (what a step cannot do
without, run as the step runs them) over the floor; for a trial within 1.5x of its floor
both must be below 1.5.

    VAE_STUDY_DATA=../shared/data python benchmarks/bench_step.py [--study STUDY]
        [--base JSON] [--k 1,5] [--steps 200] [--repeats 3]

``--base``: the searched keys' values of the configuration timed (bench_trial's default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_trial import BASE_VALUES, ROOT, gemm_rate, layer_widths, product_flops

from vae_study.config.run import RunConfig, replace_keys
from vae_study.config.schema import to_dict
from vae_study.config.study import load_study
from vae_study.core.batches import NOISE_BERNOULLI, Batches
from vae_study.core.device import configure_backends
from vae_study.core.likelihoods import BernoulliNLL
from vae_study.core.model import VAE
from vae_study.core.objectives import compute_terms
from vae_study.core.optimizer import make_optimizer
from vae_study.core.splits import Split
from vae_study.errors import DataError

PARTS = ("batch", "forward", "backward", "adam")


def training_data(run: RunConfig) -> tuple[Split, str]:
    """The study's training split and its noise, or random grey levels without the data."""
    try:
        from vae_study.core.data import load_datasets

        data = load_datasets(run.data, dequantize=run.dequantized)
        return data.train, data.train_noise
    except DataError as exc:  # no dataset here: the timing does not need real images
        print(f"(the study's data is not here: {exc}; random grey levels instead)")
        return Split(torch.rand(60000, 784), None), NOISE_BERNOULLI


def time_steps(run: RunConfig, train: Split, noise: str, steps: int) -> dict[str, float]:
    """Seconds per step of each part, over ``steps`` steps after 20 to warm up."""
    torch.manual_seed(run.train.seed)
    model = VAE(run.model)
    opt = make_optimizer(model, run.train)
    g = torch.Generator().manual_seed(run.train.seed)
    epoch = Batches(train, run.train.batch_size, shuffle=True, noise=noise, generator=g)
    batches = (x for _ in iter(int, 1) for x in epoch)  # epoch after epoch
    spent = dict.fromkeys(PARTS, 0.0)
    for i in range(steps + 20):
        t0 = time.perf_counter()
        x = next(batches)
        t1 = time.perf_counter()
        terms = compute_terms(
            model, x, k=run.train.k, beta=run.train.beta, objective=run.train.objective, generator=g
        )
        loss = terms.loss.mean()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= 20:
            for part, dt in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[part] += dt
    return {part: s / steps for part, s in spent.items()}


def time_alone(fn: Any, reps: int = 200) -> float:
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def products(run: RunConfig, d_in: int) -> Any:
    """The step's matrix products on its shapes: each layer's forward ``addmm``, its weight
    gradient, and its input gradient but for the first layer (the data needs none)."""
    enc_w, dec_w = layer_widths(to_dict(run), d_in)
    b, k = run.train.batch_size, run.train.k
    layers = [(b, a, o) for a, o in zip(enc_w, enc_w[1:], strict=False)]
    layers += [(k * b, a, o) for a, o in zip(dec_w, dec_w[1:], strict=False)]
    ops = []
    for i, (rows, a, o) in enumerate(layers):
        x, w, bias, dy = (
            torch.rand(rows, a),
            torch.randn(o, a) * 0.05,
            torch.zeros(o),
            torch.randn(rows, o),
        )
        ops.append(lambda x=x, w=w, bias=bias: torch.addmm(bias, x, w.t()))
        ops.append(lambda x=x, dy=dy: dy.t().mm(x))
        if i > 0:
            ops.append(lambda w=w, dy=dy: dy.mm(w))
    return lambda: [op() for op in ops]


def likelihood(run: RunConfig, d_in: int) -> Any:
    logits = (torch.randn(run.train.k, run.train.batch_size, d_in) * 5).requires_grad_()
    x = (torch.rand(run.train.batch_size, d_in) < 0.2).float()
    return lambda: BernoulliNLL.apply(logits, x).mean().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "beta_sweep.yaml"))
    ap.add_argument(
        "--base",
        default=BASE_VALUES,
        help="the base configuration's searched values (JSON), as bench_trial's",
    )
    ap.add_argument("--k", default="1,5", help="the sample counts K to time")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    study = load_study(Path(args.study))
    torch.set_num_threads(1)
    rate = gemm_rate("float32", 1)
    print(f"bench_step: {Path(args.study).name}, 1 thread, GEMM (2048^3) {rate / 1e9:.1f} GFLOP/s")
    summary = []
    for k in (int(v) for v in args.k.split(",")):
        run = replace_keys(study.base, {**json.loads(args.base), "train.k": k})
        configure_backends(run.train)
        train, noise = training_data(run)
        d_in = train.x.shape[1]
        enc_w, dec_w = layer_widths(to_dict(run), d_in)
        flops = run.train.batch_size * (
            3 * product_flops(enc_w) - 2.0 * enc_w[0] * enc_w[1] + k * 3 * product_flops(dec_w)
        )
        floor = flops / rate
        runs = [time_steps(run, train, noise, args.steps) for _ in range(args.repeats)]
        step = {part: statistics.median(r[part] for r in runs) for part in PARTS}
        total = sum(step.values())
        alone = {
            "the products alone": statistics.median(
                time_alone(products(run, d_in)) for _ in range(args.repeats)
            ),
            "the likelihood and its gradient alone": statistics.median(
                time_alone(likelihood(run, d_in)) for _ in range(args.repeats)
            ),
        }
        unavoidable = alone["the products alone"] + step["adam"] + step["batch"]
        print(
            f"\nK={run.train.k}, latent {run.model.latent_dim}, batch {run.train.batch_size}: "
            f"{flops / 1e6:.0f} MFLOP of products a step, floor {floor * 1e3:.2f} ms"
        )
        print(f"  {'per step':42s} {'ms':>7s} {'/ floor':>8s}")
        rows = [("the step", total), *((f"  {p}", step[p]) for p in PARTS), *alone.items()]
        rows.append(("the products, Adam and the batch", unavoidable))
        for name, sec in rows:
            print(f"  {name:42s} {sec * 1e3:7.2f} {sec / floor:7.2f}x")
        summary.append(f"K={k} {total / floor:.2f}x, unavoidable {unavoidable / floor:.2f}x")
    print("\nbench_step: " + " | ".join(summary))


if __name__ == "__main__":
    main()
