"""Fused members against the same members trained one after another, on MNIST.

For the seed model (784-400-20) and a small one (784-128-8), grey-level Bernoulli as
studies/seed.yaml, M members differing in seed, lr and beta are trained for a fixed number
of batches (``--batches``, default one epoch) two ways, timed in the same run:

1. one at a time: ``train.fit`` of each member in turn (today's trainer);
2. fused: ``fused.fit_pack`` of all M at once (M = 1 is ``epoch.train_epoch``'s path, so
   fused M=1 against one at a time measures only fit_pack's bookkeeping).

Rows also: the seed model's float32 matrix products alone (``bench_epoch.epoch_matmuls``,
the floor of any float32 trainer on this machine), and two single-thread trials at once (two
processes, ``torch.set_num_threads(1)`` each), which is how a 2-core study runs today. Speed
is in member-epochs per second (an epoch: 430 batches of 128). Memory: the unique memory
(USS: Private_Clean + Private_Dirty of /proc/self/smaps_rollup) a fused pack's process peaks
at, per extra member, each pack in a fresh process.

Validation is left out of the timing (an empty validation split): it is the same per member
either way. Goals (issue "fused members"): small model M=8 >= 2.5x over one at a time; the
seed model's member-epoch within 1.8x of its matmul floor; fused never slower.
Usage: VAE_STUDY_DATA=../shared/data python benchmarks/bench_fused.py [--threads 1]
       [--batches 430] [--members 1,4,8,16] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_epoch import epoch_matmuls  # noqa: E402

from vae_study.config.run import RunConfig, replace_keys  # noqa: E402
from vae_study.core.data import load_datasets  # noqa: E402
from vae_study.core.fused import fit_pack  # noqa: E402
from vae_study.core.splits import Datasets, Split  # noqa: E402
from vae_study.core.train import fit, make_model  # noqa: E402

MODELS = {
    "seed": {"model.hidden": [400], "model.latent_dim": 20},
    "small": {"model.hidden": [128], "model.latent_dim": 8},
}
BATCH = 128
EPOCH_BATCHES = 430  # 55,000 training images (5,000 held out) in batches of 128


DEVICE = "cpu"  # --device: where members train


def member_configs(model: str, m: int) -> list[RunConfig]:
    """M members of ``model``: seeds 0..M-1, learning rates and betas spread around 1e-3, 1."""
    return [
        replace_keys(
            RunConfig(),
            {
                **MODELS[model],
                "data.binarize": "none",
                "data.val_size": 0,  # training is timed, not validation
                "train.epochs": 1,
                "train.device": DEVICE,
                "train.seed": j,
                "train.lr": 1e-3 * (1 + 0.1 * j),
                "train.beta": 1.0 + 0.05 * j,
            },
        )
        for j in range(m)
    ]


def bench_data(batches: int) -> Datasets:
    """The first ``batches`` batches' worth of MNIST training images, no validation split."""
    data = load_datasets(member_configs("seed", 1)[0].data)
    empty = Split(data.train.x[:0], None)
    return Datasets(
        Split(data.train.x[: batches * BATCH], None), empty, data.test, data.train_noise
    ).to(DEVICE)


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def one_at_a_time(model: str, m: int, data: Datasets) -> float:
    _sync()
    t0 = time.perf_counter()
    for config in member_configs(model, m):
        fit(config, data=data, final_eval=False)
    _sync()
    return time.perf_counter() - t0


def fused(model: str, m: int, data: Datasets) -> float:
    _sync()
    t0 = time.perf_counter()
    fit_pack(member_configs(model, m), data=data, final_eval=False)
    _sync()
    return time.perf_counter() - t0


# --- processes: two single-thread trials at once; a pack's unique memory -----------------------


def stacked_matmuls(model: str, m: int, batches: int) -> float:
    """The float32 matrix products of ``batches`` steps of M stacked members of ``model``
    (``bmm`` over the members as ``stacked.BatchedLinear`` runs them; M=1 plain ``mm``), on
    random operands: the floor of a fused step, and so, against one member trained alone,
    the ceiling of what fusing can gain on this machine."""
    hidden, latent = MODELS[model]["model.hidden"][0], MODELS[model]["model.latent_dim"]
    device = torch.device(DEVICE)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(m, *shape, device=device) if m > 1 else torch.randn(*shape)

    mm = torch.bmm if m > 1 else torch.mm
    t = (lambda a: a.transpose(1, 2)) if m > 1 else (lambda a: a.T)  # noqa: E731
    b = BATCH
    x, h, z, h3 = r(b, 784), r(b, hidden), r(b, latent), r(b, hidden)
    w1, w_ml, w3, w4 = r(hidden, 784), r(2 * latent, hidden), r(hidden, latent), r(784, hidden)
    g4, g3, g_ml = r(b, 784), r(b, hidden), r(b, 2 * latent)
    _sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        mm(x, t(w1)), mm(h, t(w_ml)), mm(z, t(w3)), mm(h3, t(w4))  # forward
        mm(t(g4), h3), mm(g4, w4), mm(t(g3), z), mm(g3, w3), mm(t(g_ml), h), mm(g_ml, w_ml)
        mm(t(g3), x)  # the first layer's weights (its input needs no gradient)
    _sync()
    return time.perf_counter() - t0


def _trial_worker(model: str, seed: int, batches: int, barrier, queue) -> None:
    torch.set_num_threads(1)
    data = bench_data(batches)
    config = replace_keys(member_configs(model, 1)[0], {"train.seed": seed})
    barrier.wait()
    t0 = time.perf_counter()
    fit(config, data=data, final_eval=False)
    queue.put(time.perf_counter() - t0)


def two_trials_at_once(model: str, batches: int) -> float:
    """Wall seconds for two single-thread processes to train one member each."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_trial_worker, args=(model, s, batches, barrier, queue)) for s in (0, 1)
    ]
    for p in procs:
        p.start()
    seconds = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return max(seconds)


def uss_bytes() -> int:
    """This process's unique memory: Private_Clean + Private_Dirty, in bytes."""
    total = 0
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def _memory_worker(model: str, m: int, batches: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    data = bench_data(batches)
    fit_pack(member_configs(model, 1), data=data, final_eval=False)  # warm: kernels, allocator
    before = uss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], uss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    fit_pack(member_configs(model, m), data=data, final_eval=False)
    done.set()
    sampler.join()
    queue.put(max(peak[0], uss_bytes()) - before)


def pack_memory(model: str, m: int, batches: int, threads: int) -> int:
    """Peak USS growth of a fresh process while it trains a pack of ``m``, in bytes."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(model, m, batches, threads, queue))
    proc.start()
    grown = queue.get()
    proc.join()
    return grown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads here (a shared CPU: keep 1; OpenMP busy-waits)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU's figures")
    parser.add_argument("--batches", type=int, default=EPOCH_BATCHES)
    parser.add_argument("--members", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 4 batches, M in {1, 8}, one repeat"
    )
    # M=1 is fit's own path (epoch.train_epoch); a pack of two or more the stacked model.
    args = parser.parse_args()
    if args.quick:
        args.batches, args.members, args.repeats = 4, "1,8", 1
    global DEVICE
    DEVICE = args.device
    members = [int(m) for m in args.members.split(",")]
    torch.set_num_threads(args.threads)
    data = bench_data(args.batches)
    per_member_epoch = args.batches / EPOCH_BATCHES  # member-epochs in one member's run
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.batches} batches of "
        f"{BATCH} per member, {args.repeats} repeat(s) (median), members {members}"
    )
    fused("small", 2, data)  # warm-up: kernels, allocator
    one_at_a_time("small", 1, data)

    rates: dict[tuple[str, int], tuple[float, float]] = {}
    seed_fused_seconds: dict[int, float] = {}
    for model in MODELS:
        print(f"\n{model} model ({MODELS[model]}): member-epochs per second")
        print(f"  {'M':>3} {'one at a time':>14} {'fused':>10} {'fused / one at a time':>22}")
        for m in members:
            seq, fus = [], []
            for _ in range(args.repeats):  # interleaved so drift hits both alike
                seq.append(one_at_a_time(model, m, data))
                fus.append(fused(model, m, data))
            t_seq, t_fus = statistics.median(seq), statistics.median(fus)
            r_seq, r_fus = m * per_member_epoch / t_seq, m * per_member_epoch / t_fus
            rates[model, m] = (r_seq, r_fus)
            if model == "seed":
                seed_fused_seconds[m] = t_fus
            print(f"  {m:>3} {r_seq:>14.3f} {r_fus:>10.3f} {r_fus / r_seq:>21.2f}x")
        if 1 in members:
            print(
                "  fused M / fused M=1: "
                + "  ".join(
                    f"M={m} {rates[model, m][1] / rates[model, 1][1]:.2f}x" for m in members
                )
            )

    matmuls = statistics.median(
        epoch_matmuls(torch.device(DEVICE), args.batches * BATCH) for _ in range(args.repeats)
    )
    print(
        f"\nseed model's float32 matmuls alone: {per_member_epoch / matmuls:.3f} "
        f"member-epochs/s ({matmuls / per_member_epoch:.3f} s a member-epoch)"
    )
    for m in members:
        member_epoch = seed_fused_seconds[m] / m / per_member_epoch
        print(
            f"  fused M={m}: member-epoch {member_epoch:.3f} s = "
            f"{member_epoch / (matmuls / per_member_epoch):.2f}x the matmul floor"
        )

    print(
        "\nthe ceiling of fusing: one member at a time against the float32 matmuls alone of"
        " M stacked members (bmm), per member (needs M=1 in --members)"
    )
    for model in MODELS if 1 in members else ():
        parts = []
        for m in members:
            floor = statistics.median(
                stacked_matmuls(model, m, args.batches) for _ in range(args.repeats)
            )
            ceiling = (floor / m / per_member_epoch) ** -1 / rates[model, 1][0]
            parts.append(f"M={m} {ceiling:.2f}x")
        print(f"  {model}: " + "  ".join(parts))

    if DEVICE != "cpu":  # the process and memory rows describe a CPU study
        _final_line(members, rates, seed_fused_seconds, matmuls)
        return
    print("\ntwo single-thread trials at once (two processes, one member each):")
    for model in MODELS:
        wall = two_trials_at_once(model, args.batches)
        rate = 2 * per_member_epoch / wall
        ratios = "  ".join(f"fused M={m} / this {rates[model, m][1] / rate:.2f}x" for m in members)
        print(f"  {model}: {rate:.3f} member-epochs/s   {ratios}")

    print("\nunique memory (USS) of a fused pack, peak growth over the data alone:")
    # From M=2 up: M=1 trains through train_epoch, without a stack, and would count its cost.
    mem_members = [2, max(members)] if max(members) > 2 else [1, 2]
    for model in MODELS:
        grown = {m: pack_memory(model, m, args.batches, args.threads) for m in mem_members}
        lo, hi = mem_members
        per_extra = (grown[hi] - grown[lo]) / (hi - lo)
        params = sum(
            p.numel()
            for p in make_model(member_configs(model, 1)[0], torch.device("cpu")).parameters()
        )
        print(
            f"  {model}: M={lo} {grown[lo] / 2**20:.1f} MiB, M={hi} {grown[hi] / 2**20:.1f} "
            f"MiB: {per_extra / 2**20:.2f} MiB per extra member (its weights, gradient and "
            f"Adam's two moments: {4 * 4 * params / 2**20:.2f} MiB)"
        )

    _final_line(members, rates, seed_fused_seconds, matmuls)


def _final_line(members: list[int], rates: dict, seed_fused_seconds: dict, matmuls: float) -> None:
    m8 = 8 if 8 in members else max(members)
    seed_ratio = rates["seed", m8][1] / rates["seed", m8][0]
    small_ratio = rates["small", m8][1] / rates["small", m8][0]
    floor_ratio = (seed_fused_seconds[m8] / m8) / matmuls
    print(
        f"\nbench_fused: seed M={m8} {seed_ratio:.2f}x | small M={m8} {small_ratio:.2f}x | "
        f"seed member-epoch / matmul floor {floor_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
