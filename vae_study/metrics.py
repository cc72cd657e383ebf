"""Metric names shared by the trainer, the Ray trainable and the report.

Every number is per example, in nats (except counts, bits/dim and seconds). Keep the strings
here and nowhere else: a metric renamed in one file and not another is a silent bug.

A number says what it is. With a likelihood that is a normalised distribution of the data
(``QUANTITY_NLL``: Bernoulli on binary data; a density on dequantised grey levels) -L_K is a
negative log-likelihood bound, ``*/nll``. With the Bernoulli "likelihood" on grey levels
(``QUANTITY_CROSS_ENTROPY``, the pytorch/examples VAE) it normalises nothing: -L_K is then a
bound made of cross-entropies, ``*/ce_bound``, never called an NLL, and its distortion and
-ELBO are cross-entropies too. ``bound_key`` gives the name for a run.
"""

from __future__ import annotations

EPOCH = "epoch"
TRAIN_LOSS = "train/loss"  # the optimised objective: D + beta*R (elbo) or -L_K (iwae)
TRAIN_RATE = "train/rate"
TRAIN_DISTORTION = "train/distortion"
VAL_NEG_ELBO = "val/neg_elbo"
VAL_RATE = "val/rate"
VAL_DISTORTION = "val/distortion"
# When training ends: -L_K on the first eval.val_examples validation examples (eval.val_k).
VAL_NLL = "val/nll"
VAL_CE_BOUND = "val/ce_bound"
VAL_BPD = "val/bpd"  # bits/dim of val/nll, dequantised 8-bit data only
EPOCH_SECONDS = "time/epoch_s"
TRAIN_EXAMPLES = "data/train_examples"  # training examples a trial used (train_subset)
TRAIN_NOISE = "data/train_noise"  # fresh noise per batch: none, bernoulli (dynamic), uniform
TOTAL_SECONDS = "time/total_s"

TEST_NEG_ELBO = "test/neg_elbo"
TEST_RATE = "test/rate"
TEST_DISTORTION = "test/distortion"
TEST_NLL = "test/nll"  # -L_K with eval.k samples: the literature's test NLL estimate
TEST_CE_BOUND = "test/ce_bound"  # the same bound with the grey-level cross-entropy
TEST_BPD = "test/bpd"  # bits/dim of test/nll, dequantised 8-bit data only
# Mean over the test/nll examples of (-ELBO - (-L_K)), each example's both terms computed
# on that example: the gap the report shows, never a difference across example subsets.
TEST_BOUND_GAP = "test/bound_gap"
TEST_NLL_EXAMPLES = "test/nll_examples"  # how many test examples test/nll averages
TEST_ACTIVE_UNITS = "test/active_units"
TEST_MUTUAL_INFO = "test/mutual_info"
TEST_MARGINAL_KL = "test/marginal_kl"
TEST_KL_PER_DIM = "test/kl_per_dim"  # a list, one entry per latent dimension

EPOCH_METRICS = (
    EPOCH,
    TRAIN_LOSS,
    TRAIN_RATE,
    TRAIN_DISTORTION,
    VAL_NEG_ELBO,
    VAL_RATE,
    VAL_DISTORTION,
    EPOCH_SECONDS,
)
TEST_SCALARS = (
    TEST_NEG_ELBO,
    TEST_RATE,
    TEST_DISTORTION,
    TEST_NLL,
    TEST_CE_BOUND,
    TEST_BPD,
    TEST_BOUND_GAP,
    TEST_ACTIVE_UNITS,
    TEST_MUTUAL_INFO,
    TEST_MARGINAL_KL,
)
# Computed once when training ends, on validation examples: what a study selects on.
FINAL_VAL_SCALARS = (VAL_NLL, VAL_CE_BOUND, VAL_BPD)

QUANTITY_NLL = "nll"
QUANTITY_CROSS_ENTROPY = "cross_entropy"
QUANTITY_WORDS = {
    QUANTITY_NLL: "negative log-likelihood (nats per example)",
    QUANTITY_CROSS_ENTROPY: "Bernoulli cross-entropy on grey levels, a reconstruction loss and "
    "not a likelihood (nats per example)",
}


def bound_key(split: str, quantity: str) -> str:
    """The name of -L_K on ``split`` (val, test): ``nll`` or ``ce_bound`` by quantity."""
    if quantity not in QUANTITY_WORDS:
        raise ValueError(f"quantity must be one of {sorted(QUANTITY_WORDS)}, got {quantity!r}")
    return f"{split}/nll" if quantity == QUANTITY_NLL else f"{split}/ce_bound"


def is_test_metric(name: str) -> bool:
    return name.startswith("test/")


# Metrics a study may optimise, with the direction that is "better". Test metrics only
# with search.select_on_test: true (selection on test biases the test numbers).
DIRECTIONS = {
    VAL_NEG_ELBO: "min",
    VAL_RATE: "min",
    VAL_DISTORTION: "min",
    VAL_NLL: "min",
    VAL_CE_BOUND: "min",
    VAL_BPD: "min",
    TEST_NEG_ELBO: "min",
    TEST_RATE: "min",
    TEST_DISTORTION: "min",
    TEST_NLL: "min",
    TEST_CE_BOUND: "min",
    TEST_BPD: "min",
    TEST_ACTIVE_UNITS: "max",
    TEST_MUTUAL_INFO: "max",
}
