"""The test NLL (-L_K, K=5000) of the seed model, with vae_study's Bernoulli NLL kernel
against torch's ``binary_cross_entropy_with_logits``, timed in the same run.

Each example's K=5000 decoder outputs go through the Bernoulli NLL: 3.9 million values an
example, where torch's CPU kernel (scalar log1p) costs about 5 ns a value. The resident
memory before and after each pass is printed too: it must stay flat over the examples.
Usage: VAE_STUDY_DATA=../shared/data python benchmarks/bench_nll.py [--examples 300]
[--k 5000] [--device cuda] [--chunk-size 8192]
(without a dataset, random grey images are used).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import vae_study.core.model as model_module
from vae_study.config.run import EvalConfig, RunConfig
from vae_study.core.evaluate import iwae_nll
from vae_study.core.likelihoods import torch_bernoulli_nll
from vae_study.core.train import configure_backends, make_model, resolve_device
from vae_study.errors import DataError


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(model, x, k: int, chunk_size: int) -> tuple[float, float, float]:
    before = rss_mb()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    nll = iwae_nll(
        model, x, k, chunk_size=chunk_size, generator=torch.Generator(x.device).manual_seed(0)
    )
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, nll.mean().item(), rss_mb() - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=EvalConfig().chunk_size,
        help="decoder rows at once (eval.chunk_size); a GPU wants more",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = RunConfig()
    configure_backends(config.train, device)  # float32 means float32, as in fit
    try:
        from vae_study.core.data import load_datasets

        x = load_datasets(config.data, device=device).test.x[: args.examples]
        source = "MNIST test images"
    except DataError:
        x = torch.rand(args.examples, 784, device=device)
        source = "random grey images (no dataset found)"
    model = make_model(config, device).eval()
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.examples} {source}, "
        f"K={args.k}, chunk size {args.chunk_size}, seed model (untrained)"
    )
    ours = model_module.bernoulli_nll
    timed(model, x[:5], args.k, args.chunk_size)  # warm-up
    rows = {}
    for name, fn in (("torch kernel", torch_bernoulli_nll), ("vae_study", ours)):
        model_module.bernoulli_nll = fn
        try:
            rows[name] = timed(model, x, args.k, args.chunk_size)
        finally:
            model_module.bernoulli_nll = ours
    for name, (secs, nll, grew) in rows.items():
        print(
            f"  {name:13s} {secs:7.2f} s  ({1000 * secs / args.examples:5.1f} ms an example)"
            f"  test/nll {nll:.4f}  resident memory {grew:+.0f} MB"
        )
    print(
        f"torch kernel / vae_study = {rows['torch kernel'][0] / rows['vae_study'][0]:.2f}x; "
        f"same NLL to {abs(rows['torch kernel'][1] - rows['vae_study'][1]):.1e} nats"
    )


if __name__ == "__main__":
    main()
