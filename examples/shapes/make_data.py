"""Draw the shapes dataset: colour discs, squares and triangles on a dark background.

    python -m examples.shapes.make_data examples/shapes/shapes.npz [--train 4000 --test 500]

writes an .npz with ``train`` (N, size, size, 3) uint8, ``train_labels`` (0 disc, 1 square,
2 triangle), ``test`` and ``test_labels``: what ``data.dataset: npz`` reads (vae_study holds
out its validation examples from ``train``). Same seed, same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPES = ("disc", "square", "triangle")


def draw(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, size, size, 3) uint8 of one shape each, at a random place, size, colour."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(labels):
        r = rng.uniform(0.15, 0.3) * size  # half the shape's extent
        cy, cx = rng.uniform(r, size - r, 2)
        if label == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        elif label == 1:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:  # apex up: below the apex and within the widening sides
            top = cy - r
            mask = (yy >= top) & (yy <= cy + r) & (abs(xx - cx) <= (yy - top) / 2)
        background = rng.integers(0, 40, 3)
        colour = rng.integers(80, 256, 3)
        noise = rng.integers(0, 4, (size, size, 3))  # a little texture: 2 bits at most
        images[i] = np.clip(np.where(mask[..., None], colour, background) + noise, 0, 255)
    return images, labels.astype(np.int64)


def make_shapes(
    path: str | Path, *, n_train: int = 4000, n_test: int = 500, size: int = 32, seed: int = 0
) -> Path:
    """Write the dataset to ``path`` (folders made as needed); returns the path."""
    rng = np.random.default_rng(seed)
    train, train_labels = draw(n_train, size, rng)
    test, test_labels = draw(n_test, size, rng)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, train=train, train_labels=train_labels, test=test, test_labels=test_labels
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(Path(__file__).parent / "shapes.npz"))
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_shapes(
        args.path, n_train=args.train, n_test=args.test, size=args.size, seed=args.seed
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
