"""Synthetic feature tables for the baseline-selector tests."""

from __future__ import annotations

import numpy as np
import pytest

from goracs_ray.select.types import FeatureTable

N_POOL = 61  # odd, so n = N and odd budgets are both exercised

# Options that keep the DEALRec surrogate quick on the tiny pool.
FAST_OPTS: dict[str, dict[str, object]] = {"dealrec": {"epochs": 20, "cg_iters": 10, "n_bins": 8}}


def make_features(n: int = N_POOL, *, seed: int = 0, **overrides: object) -> FeatureTable:
    """A FeatureTable with every optional feature filled (clustered embeddings, skewed items)."""
    rng = np.random.default_rng(seed)
    d, m, k = 6, 9, 5
    centers = rng.normal(scale=4.0, size=(4, d))
    emb = centers[rng.integers(4, size=n)] + rng.normal(size=(n, d))
    fields: dict[str, object] = {
        "train_ids": np.array([f"s{i:03d}" for i in range(n)]),
        "train_emb": emb,
        "valid_emb": rng.normal(size=(m, d)),
        "grad_norms": rng.gamma(2.0, size=n),
        "train_losses": rng.gamma(2.0, size=n),
        "train_labels": rng.integers(2, size=n),
        "valid_labels": rng.integers(2, size=m),
        "train_grad_proj": rng.normal(size=(n, k)),
        "valid_grad_proj": rng.normal(size=(m, k)),
        "train_groups": {
            "user": rng.integers(7, size=n),
            "item": np.minimum(rng.geometric(0.3, size=n), 12),
        },
    }
    fields.update(overrides)
    return FeatureTable(**fields)


@pytest.fixture(scope="module")
def features() -> FeatureTable:
    return make_features()


@pytest.fixture(scope="session")
def build_features():
    """The :func:`make_features` factory (test modules cannot import conftest by name)."""
    return make_features


@pytest.fixture(scope="session")
def fast_opts() -> dict[str, dict[str, object]]:
    """Per-method options for quick runs on the tiny pool."""
    return FAST_OPTS
