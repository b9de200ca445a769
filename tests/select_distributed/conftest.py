"""A small Gaussian-mixture selection problem for the distributed-selection tests."""

from __future__ import annotations

import numpy as np
import pytest


def _problem(seed: int = 0, n_train: int = 300, n_valid: int = 60, dim: int = 8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, dim)) * 2
    train = (centers[rng.integers(0, 4, n_train)] + rng.normal(size=(n_train, dim))).astype(
        np.float32
    )
    valid = (centers[rng.integers(0, 4, n_valid)] + rng.normal(size=(n_valid, dim))).astype(
        np.float32
    )
    grads = rng.lognormal(0.0, 0.5, n_train).astype(np.float32)
    return train, valid, grads


@pytest.fixture(scope="session")
def make_problem():
    """``make_problem(seed, n_train=300, n_valid=60, dim=8) -> (train, valid, grads)``."""
    return _problem
