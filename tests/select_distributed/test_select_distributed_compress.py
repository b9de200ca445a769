"""Balanced compression of the validation set: equal masses, the POO-change bound holds."""

from __future__ import annotations

import numpy as np
import pytest

from goracs_ray.select.compress import compress_validation
from goracs_ray.select.cost import cost_matrix, distance_block, normalize_block
from goracs_ray.select.itra import select_coreset
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.types import FeatureTable


def test_compression_bound_holds_for_several_coresets(make_problem):
    train, valid, grads = make_problem(7, n_valid=90)
    target = compress_validation(valid, 30, seed=1)
    assert target.points.shape == (30, valid.shape[1])
    assert target.transport_distance > 0
    full = cost_matrix(train, valid, grads, lam=0.1)
    bound = target.poo_change_bound(full.scales)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rows = rng.choice(len(train), 12, replace=False)
        on_points = normalize_block(
            distance_block(train[rows], target.points), grads[rows], full.scales
        )
        change = abs(solve_ot(full.values[rows]).value - solve_ot(on_points).value)
        assert change <= bound + 1e-6


def test_compression_is_seeded_and_checks_m(make_problem):
    _, valid, _ = make_problem(7, n_valid=90)
    a, b = compress_validation(valid, 30, seed=3), compress_validation(valid, 30, seed=3)
    np.testing.assert_array_equal(a.points, b.points)
    with pytest.raises(ValueError, match="compress_valid"):
        compress_validation(valid, 91)


def test_select_distributed_on_compressed_target(ray_local, make_problem):
    from goracs_ray.select.distributed import WorkerSettings, select_distributed

    train, valid, grads = make_problem(5, n_valid=90)
    points = compress_validation(valid, 30).points
    serial = select_coreset(train, points, grads, 20, 0.1, max_iters=3, cut_num=10)
    features = FeatureTable(
        train_ids=np.arange(len(train)), train_emb=train, valid_emb=valid, grad_norms=grads
    )
    result = select_distributed(
        features, 20, lam=0.1, max_iters=3, cut_num=10, compress_valid=30,
        workers=WorkerSettings(evaluators=1, shards=2),
    )  # fmt: skip
    np.testing.assert_array_equal(result.ids, serial.ids)
    info = result.trace()["parts"][0]["compression"]
    assert info["m"] == 30
    assert info["n_valid"] == 90
    assert info["poo_change_bound"] > 0
