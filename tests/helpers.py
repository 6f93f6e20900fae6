"""Tiny datasets in the real on-disk formats, for tests."""

from pathlib import Path

import numpy as np

from rp_tune.data import synthetic_arrays, write_cifar_batches

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root: Path, n_train: int = 200, n_test: int = 60, seed: int = 0) -> Path:
    """Learnable class templates + noise; pixel (0, 0, 0) of train image i encodes i % 256."""
    x, y = synthetic_arrays(n_train, 10, seed)
    tx, ty = synthetic_arrays(n_test, 10, seed + 1)
    x = x.copy()
    x[:, 0, 0, 0] = np.arange(n_train) % 256
    return write_cifar_batches(root, (x, y), (tx, ty), CLASSES)
