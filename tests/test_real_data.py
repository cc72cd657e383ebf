"""Real MNIST, Fashion-MNIST and binarized MNIST from ../shared/data (skipped when absent)."""

from __future__ import annotations

import pytest

from vae_study import metrics as M
from vae_study.config.data import DataConfig
from vae_study.config.run import RunConfig, replace_keys
from vae_study.core.data import load_datasets
from vae_study.core.train import fit

pytestmark = pytest.mark.data


@pytest.mark.parametrize(
    "dataset, sizes",
    [
        ("mnist", (55000, 5000, 10000)),
        ("fashion_mnist", (55000, 5000, 10000)),
        ("binarized_mnist", (50000, 5000, 10000)),
    ],
)
def test_real_datasets_have_their_published_sizes(shared_data, dataset, sizes):
    d = load_datasets(DataConfig(dataset=dataset, root=str(shared_data)))
    assert (len(d.train), len(d.val), len(d.test)) == sizes
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0
    mean = float(d.test.x.mean())
    # Mean pixel intensities of the test sets: MNIST about 0.133, Fashion-MNIST about 0.287.
    assert mean == pytest.approx(
        {"mnist": 0.133, "fashion_mnist": 0.287, "binarized_mnist": 0.133}[dataset], abs=0.01
    )


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_seed_configuration_reaches_the_pytorch_examples_anchor(shared_data, precision):
    """784-400-20 ReLU, Bernoulli on grey levels, Adam 1e-3, batch 128, 10 epochs: the
    pytorch/examples VAE reaches a test loss of about 105-106 nats; mixed precision too."""
    config = replace_keys(
        RunConfig(),
        {
            "data.root": str(shared_data),
            "train.device": "cpu",
            "train.precision": precision,
            "eval.k": 10,
            "eval.nll_examples": 500,
            "eval.surgery_examples": 2000,
        },
    )
    result = fit(config)
    neg_elbo = result.final[M.TEST_NEG_ELBO]
    assert 104.0 < neg_elbo < 107.5, neg_elbo
    assert result.final[M.TEST_RATE] + result.final[M.TEST_DISTORTION] == pytest.approx(neg_elbo)
    assert 20 <= result.final[M.TEST_RATE] <= 30
