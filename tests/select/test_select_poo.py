"""POO of arbitrary coresets (`select.poo`): equals the ITRA objective, terms add up."""

from __future__ import annotations

import numpy as np
import pytest

from goracs_ray.select.cost import cost_matrix
from goracs_ray.select.itra import select_coreset
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.poo import coreset_poo, spearman
from goracs_ray.select.types import FeatureTable


def _features(seed=0, n_train=300, n_valid=80, dim=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, dim)) * 3
    train = centers[rng.integers(0, 4, n_train)] + rng.normal(size=(n_train, dim))
    valid = centers[rng.integers(0, 4, n_valid)] + rng.normal(size=(n_valid, dim))
    grads = rng.lognormal(0.0, 0.5, n_train)
    return FeatureTable(
        train_ids=np.array([f"s{i}" for i in range(n_train)]),
        train_emb=train.astype(np.float32),
        valid_emb=valid.astype(np.float32),
        grad_norms=grads.astype(np.float32),
    )


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_poo_equals_the_itra_objective_and_the_full_cost(lam):
    features = _features()
    result = select_coreset(
        features.train_emb, features.valid_emb, features.grad_norms, 20, lam,
        ids=features.train_ids, max_iters=5,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    random_ids = rng.choice(features.train_ids, 20, replace=False)
    terms = coreset_poo(features, {"goracs": result.ids.tolist(), "random": random_ids}, lam=lam)
    assert terms["goracs"].poo == pytest.approx(result.parts[0].poo, abs=1e-5)
    # The same value straight from the full normalised cost matrix, for any subset.
    cost = cost_matrix(features.train_emb, features.valid_emb, features.grad_norms, lam=lam)
    rows = [int(s[1:]) for s in random_ids]
    assert terms["random"].poo == pytest.approx(solve_ot(cost.values[rows]).value, abs=1e-5)
    assert terms["random"].size == 20
    # GORACS minimises POO: its coreset beats a random one of the same size.
    assert terms["goracs"].poo < terms["random"].poo
    # The gradient term is the mean normalised norm of the coreset.
    g_hat = features.grad_norms / features.grad_norms.max()
    assert terms["random"].grad_bonus == pytest.approx(float(g_hat[rows].mean()), rel=1e-6)


def test_bad_coresets_are_named():
    features = _features(n_train=40, n_valid=10)
    with pytest.raises(ValueError, match="coreset `a`.*not in the pool"):
        coreset_poo(features, {"a": ["s1", "nope"]}, lam=0.1)
    with pytest.raises(ValueError, match="coreset `b`.*repeated"):
        coreset_poo(features, {"b": ["s1", "s1"]}, lam=0.1)
    with pytest.raises(ValueError, match="coreset `c`"):
        coreset_poo(features, {"c": []}, lam=0.1)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
