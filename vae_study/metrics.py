"""Metric names shared by the trainer, the Ray trainable and the report.

Every number is per example, in nats (except counts and seconds). Keep the strings here and
nowhere else: a metric renamed in one file and not another is a silent bug.
"""

from __future__ import annotations

EPOCH = "epoch"
TRAIN_LOSS = "train/loss"  # the optimised objective: D + beta*R (elbo) or -L_K (iwae)
TRAIN_RATE = "train/rate"
TRAIN_DISTORTION = "train/distortion"
VAL_NEG_ELBO = "val/neg_elbo"
VAL_RATE = "val/rate"
VAL_DISTORTION = "val/distortion"
EPOCH_SECONDS = "time/epoch_s"
TOTAL_SECONDS = "time/total_s"

TEST_NEG_ELBO = "test/neg_elbo"
TEST_RATE = "test/rate"
TEST_DISTORTION = "test/distortion"
TEST_NLL = "test/nll"  # -L_K with eval.k samples: the literature's test NLL estimate
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
    TEST_ACTIVE_UNITS,
    TEST_MUTUAL_INFO,
    TEST_MARGINAL_KL,
)
# Metrics a study may optimise, with the direction that is "better".
DIRECTIONS = {
    VAL_NEG_ELBO: "min",
    VAL_RATE: "min",
    VAL_DISTORTION: "min",
    TEST_NEG_ELBO: "min",
    TEST_RATE: "min",
    TEST_DISTORTION: "min",
    TEST_NLL: "min",
    TEST_ACTIVE_UNITS: "max",
    TEST_MUTUAL_INFO: "max",
}
