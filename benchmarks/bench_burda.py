"""The ordering of Burda, Grosse & Salakhutdinov 2015 (Table 1), reproduced on a budget.

The IWAE paper's model (784-200-200-50, tanh, Bernoulli, dynamically binarized MNIST, all
60k training images) is trained with the VAE objective at K=1 and the IWAE objective at K=5
(K=50 with --k50), for equal epochs, with several seeds each (the same seeds for both
objectives), under one of two protocols:

- ``--protocol short`` (the default): batch 100, Adam (0.9, 0.999, eps 1e-8) at a constant
  1e-3: the quick check, not the paper's optimisation;
- ``--protocol paper``: the paper's optimisation (its released code): batch 20, Adam
  beta1 0.99, beta2 0.999, eps 1e-4, the learning rate 1e-3 * 10**(-i/7) over 8 stages of
  3**i of 3280 epochs (about 9.8M updates), scaled to the --epochs you pass
  (``train.lr_schedule: burda``), so a short run passes through every stage. (The released
  Adam starts its second moments at 1, not 0; torch's starts them at 0.)

Every run is scored with K=5000 importance samples on ONE fixed set of test images of the
protocol's fixed test binarization (the first --examples; all 10k on a GPU by default, the
first 1000 on a CPU), so differences between runs are paired example by example. It prints:

- per configuration: the mean test NLL over seeds +- its standard error (sd / sqrt(seeds)),
  the -ELBO, and the active units (Burda et al. 2015, sec. 5.2), mean over seeds;
- per pair of configurations and seed: the paired difference of the NLL on the images and
  its standard error over examples (the subset must be large enough for it to be < 0.2);
- the check of the ordering, a paired t-test over seeds: the per-seed differences VAE K=1
  minus IWAE K=5 have a 95% t-interval (n - 1 degrees of freedom: t = 4.30 for 3 seeds)
  above 0, and IWAE K=5 has at least as many active units.

The paper trains 3280 epochs (86.76 VAE k=1, 85.54 IWAE k=5, K=5000 on all 10k test images);
a few dozen epochs give higher NLLs and, if the paper is right, the same ordering.

Usage: VAE_STUDY_DATA=../shared/data python benchmarks/bench_burda.py [--protocol paper]
       [--epochs N] [--seeds 3] [--examples N] [--k50] [--threads 1]; --smoke runs a tiny
       version on made-up data.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_study.config.run import RunConfig, replace_keys
from vae_study.core.data import load_datasets
from vae_study.core.device import resolve_device
from vae_study.core.evaluate import active_units, encode_all, iwae_nll, neg_elbo_per_example
from vae_study.core.train import FINAL_SAMPLES_SEED, fit
from vae_study.report.paired import CONFIDENCE, contrast

TEST_K = 5000  # the literature's test NLL estimator
# The optimisation of each protocol (see the module's docstring) and its default epochs:
# the same training time on a CPU (17 minutes for 3 seeds on one thread of a Xeon).
PROTOCOLS = {
    "short": {"train.batch_size": 100, "train.lr": 1e-3},
    "paper": {
        "train.batch_size": 20,
        "train.lr": 1e-3,
        "train.adam_betas": [0.99, 0.999],
        "train.adam_eps": 1e-4,
        "train.lr_schedule": "burda",
    },
}
DEFAULT_EPOCHS = {"short": 30, "paper": 16}
PAPER_EPOCHS, PAPER_UPDATES = 3280, 3280 * 60_000 // 20


@dataclass
class Run:
    label: str
    seed: int
    nll: torch.Tensor  # (examples,) -L_5000 per example of the fixed subset
    neg_elbo: float  # on the same examples
    active: int  # on the whole test split
    train_s: float
    eval_s: float


def configs(args: argparse.Namespace) -> dict[str, dict]:
    out = {
        "VAE K=1": {"train.objective": "elbo", "train.k": 1},
        "IWAE K=5": {"train.objective": "iwae", "train.k": 5},
    }
    if args.k50:
        out["IWAE K=50"] = {"train.objective": "iwae", "train.k": 50}
    return out


def base_config(args: argparse.Namespace, root: str | None) -> RunConfig:
    keys = {
        "data.dataset": "mnist",
        "data.binarize": "dynamic",
        "data.root": root,
        "data.val_size": 0 if not args.smoke else 20,
        "model.hidden": [200, 200],
        "model.latent_dim": 50,
        "model.activation": "tanh",
        "train.epochs": args.epochs,
        **PROTOCOLS[args.protocol],
        "train.device": args.device,
    }
    if args.smoke:
        keys.update({"model.hidden": [16, 16], "model.latent_dim": 4})
    return replace_keys(RunConfig(), keys)


def one_run(label: str, keys: dict, seed: int, base: RunConfig, k: int, examples: int) -> Run:
    config = replace_keys(base, {**keys, "train.seed": seed})
    t0 = time.perf_counter()

    def progress(row: dict, _folder: object) -> None:
        if row["epoch"] % 10 == 0:
            print(
                f"  {label} seed {seed}: epoch {int(row['epoch'])}, train loss "
                f"{row['train/loss']:.2f}, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )

    result = fit(config, final_eval=False, on_epoch=progress)
    train_s = time.perf_counter() - t0
    data = load_datasets(config.data, device=next(result.model.parameters()).device)
    model = result.model.eval()
    x = data.test.x[:examples]  # the fixed test binarization: the same tensor in every run
    t0 = time.perf_counter()
    g = torch.Generator(x.device).manual_seed(FINAL_SAMPLES_SEED)
    nll = iwae_nll(model, x, k, generator=g).cpu()
    neg_elbo = neg_elbo_per_example(model, x, generator=g).mean().item()
    mu, _ = encode_all(model, data.test.x)
    eval_s = time.perf_counter() - t0
    return Run(label, seed, nll, neg_elbo, active_units(mu), train_s, eval_s)


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return m, se


def report(runs: list[Run], labels: list[str], args: argparse.Namespace) -> bool:
    by = {lab: [r for r in runs if r.label == lab] for lab in labels}
    n = runs[0].nll.numel()
    print(
        f"\nTest NLL, K={args.k} on the first {n} test images of the fixed binarization; "
        f"protocol {args.protocol}, {args.epochs} epochs, {args.updates} updates a run "
        f"({100 * args.updates / PAPER_UPDATES:.2f}% of the paper's {PAPER_UPDATES}); "
        f"mean +- standard error over {args.seeds} seeds"
    )
    print("| training | test NLL (nats) | -ELBO (nats) | active units | seeds |")
    print("|---|---|---|---|---|")
    stats = {}
    for lab in labels:
        nll_m, nll_se = mean_se([r.nll.mean().item() for r in by[lab]])
        elbo_m, elbo_se = mean_se([r.neg_elbo for r in by[lab]])
        au = statistics.fmean(r.active for r in by[lab])
        stats[lab] = (nll_m, nll_se, au)
        print(
            f"| {lab} | {nll_m:.2f} +- {nll_se:.2f} | {elbo_m:.2f} +- {elbo_se:.2f} | "
            f"{au:.1f} ({', '.join(str(r.active) for r in by[lab])}) | {len(by[lab])} |"
        )
    print("\nPaired differences on the same examples (first minus second), per seed:")
    worst = 0.0
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            for ra, rb in zip(by[a], by[b], strict=True):
                d = (ra.nll - rb.nll).double()
                se = (d.std() / math.sqrt(d.numel())).item()
                worst = max(worst, se)
                print(
                    f"  seed {ra.seed}: {a} - {b} = {d.mean().item():+.3f} nats, standard "
                    f"error over {d.numel()} examples {se:.3f}"
                )
    print(
        f"largest paired standard error: {worst:.3f} nats (goal < 0.2: "
        f"{'met' if worst < 0.2 else 'NOT met'})"
    )
    vae_au, iw_au = stats["VAE K=1"][2], stats["IWAE K=5"][2]
    # Paired over seeds: seed s of both objectives shares its seed and the test images.
    per_seed = [
        a.nll.mean().item() - b.nll.mean().item()
        for a, b in zip(by["VAE K=1"], by["IWAE K=5"], strict=True)
    ]
    c = contrast(per_seed)
    ok_nll = c is not None and c.low > 0
    if c is None:
        print("paired t-test: needs 2 or more seeds")
    else:
        print(
            f"IWAE K=5 better than VAE K=1 by {c.mean:.2f} +- {c.se:.2f} nats (paired over "
            f"{c.n} seeds, per seed {', '.join(f'{d:.2f}' for d in per_seed)}); "
            f"{100 * CONFIDENCE:.0f}% t-interval [{c.low:.2f}, {c.high:.2f}] above 0: "
            f"{'met' if ok_nll else 'NOT met'}"
        )
    ok_au = iw_au >= vae_au
    print(
        f"active units IWAE K=5 {iw_au:.1f} >= VAE K=1 {vae_au:.1f}: "
        f"{'met' if ok_au else 'NOT met'}"
    )
    train = sum(r.train_s for r in runs)
    evals = sum(r.eval_s for r in runs)
    print(
        f"time: training {train:.0f} s, test NLL {evals:.0f} s "
        f"({1000 * evals / (len(runs) * n):.1f} ms an example with K={args.k})"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    return ok_nll and ok_au and worst < 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="short")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default: {DEFAULT_EPOCHS} (the paper: {PAPER_EPOCHS}, for a GPU with hours)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help="test images scored (default: all 10k on a GPU, the first 1000 on a CPU)",
    )
    parser.add_argument("--k", type=int, default=TEST_K, help="test importance samples")
    parser.add_argument("--k50", action="store_true", help="also IWAE K=50 (slow on a CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 on a shared 2-core machine, "
        "where busy-waiting OpenMP threads slow each step 40-fold",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny run on made-up data: checks the script, proves nothing",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.protocol]
    if args.examples is None:
        args.examples = 10_000 if resolve_device(args.device).type == "cuda" else 1000
    root = None
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import write_mnist

        root = str(
            write_mnist(
                Path(tempfile.mkdtemp(prefix="bench_burda_")) / "data", n_train=200, n_test=50
            )
        )
        args.epochs, args.seeds, args.examples, args.k = 1, 2, 20, 20
    base = base_config(args, root)
    train_size = len(load_datasets(base.data).train)
    args.updates = args.epochs * -(-train_size // base.train.batch_size)
    runs = []
    labels = list(configs(args))
    for seed in range(args.seeds):
        for label, keys in configs(args).items():
            run = one_run(label, keys, seed, base, args.k, args.examples)
            print(
                f"{label:10s} seed {seed}: test NLL {run.nll.mean().item():.3f}, "
                f"-ELBO {run.neg_elbo:.3f}, active units {run.active}, trained in "
                f"{run.train_s:.0f} s, evaluated in {run.eval_s:.0f} s",
                flush=True,
            )
            runs.append(run)
    ok = report(runs, labels, args)
    print(f"bench_burda: ordering {'reproduced' if ok else 'NOT reproduced'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
