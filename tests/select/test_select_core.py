"""POO cost, exact OT with duals, and the lazy greedy against brute-force / dense oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from goracs_ray.select.cost import cost_matrix, cost_scales, distance_block, normalize_block
from goracs_ray.select.greedy import greedy_dense, greedy_init
from goracs_ray.select.ot import add_row_potential, solve_ot


def _problem(seed: int, n_train: int, n_valid: int, dim: int = 6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)) * 2
    train = (centers[rng.integers(0, 3, n_train)] + rng.normal(size=(n_train, dim))).astype(
        np.float32
    )
    valid = (centers[rng.integers(0, 3, n_valid)] + rng.normal(size=(n_valid, dim))).astype(
        np.float32
    )
    grads = rng.lognormal(0.0, 0.5, n_train).astype(np.float32)
    return train, valid, grads


def test_cost_matches_dense_formula_and_ignores_block_size():
    train, valid, grads = _problem(0, 37, 11)
    d = np.linalg.norm(train[:, None, :].astype(np.float64) - valid[None], axis=2)
    c = d / d.max() - 0.5 * (grads / grads.max())[:, None]
    c = (c - c.min()) / (c.max() - c.min())
    full = cost_matrix(train, valid, grads, lam=0.5, block_rows=5)
    np.testing.assert_allclose(full.values, c, atol=2e-6)
    assert full.values.dtype == np.float32
    np.testing.assert_array_equal(
        full.values, cost_matrix(train, valid, grads, lam=0.5, block_rows=64).values
    )


def test_pieces_rebuild_the_matrix_from_row_shards():
    train, valid, grads = _problem(1, 20, 9)
    shards = [distance_block(train[a:b], valid) for a, b in ((0, 7), (7, 20))]
    scales = cost_scales(
        np.concatenate([s.min(1) for s in shards]),
        np.concatenate([s.max(1) for s in shards]),
        grads,
        lam=0.3,
    )
    rows = [normalize_block(s, grads[a:b], scales) for s, (a, b) in zip(shards, ((0, 7), (7, 20)))]
    np.testing.assert_array_equal(np.vstack(rows), cost_matrix(train, valid, grads, lam=0.3).values)


def _lp_ot(cost: np.ndarray) -> float:
    n, m = cost.shape
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    return float(linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_value_and_duals_are_certified(seed):
    rng = np.random.default_rng(seed)
    cost = rng.random((4, 7)).astype(np.float32)
    sol = solve_ot(cost)
    assert sol.optimal
    np.testing.assert_allclose(sol.value, _lp_ot(cost.astype(np.float64)), atol=1e-9)
    # dual feasibility and zero duality gap: value = <a, u> + <b, v>
    assert (sol.u[:, None] + sol.v[None, :] <= cost + 1e-9).all()
    np.testing.assert_allclose(sol.u.mean() + sol.v.mean(), sol.value, atol=1e-9)


def test_gradient_term_identity():
    """OT_{d - lam g} = OT_d - (lam/|S|) Σ_{i∈S} g_i (every row of the plan sums to 1/|S|)."""
    rng = np.random.default_rng(3)
    d = rng.random((5, 8))
    g = rng.random(5)
    for lam in (0.0, 0.5, 2.0):
        lhs = solve_ot(d - lam * g[:, None]).value
        np.testing.assert_allclose(lhs, solve_ot(d).value - lam * g.mean(), atol=1e-12)


def test_warm_start_gives_the_cold_value():
    rng = np.random.default_rng(4)
    cost = rng.random((30, 90))
    sol = solve_ot(cost)
    swapped = cost.copy()
    swapped[3] = rng.random(90)
    u = sol.u.copy()
    u[3] = add_row_potential(sol.v, swapped[3])
    warm = solve_ot(swapped, potentials_init=(u, sol.v))
    np.testing.assert_allclose(warm.value, solve_ot(swapped).value, atol=1e-12)


def _reference_greedy(cost: np.ndarray, n: int, trim: bool) -> tuple[list[int], list[float]]:
    """Dense transcription of the reference rule (gain = Σc - Σ|m - c|), its trim optional."""
    n_rows = cost.shape[0]
    chosen = [int(cost.sum(axis=1).argmin())]
    flag = trim and len(np.unique(cost.argmin(axis=0))) > n
    col_min = cost[chosen[0]].copy()
    true_gains = []
    while True:
        if len(chosen) >= n:
            owners = np.asarray(chosen)[cost[chosen].argmin(axis=0)]
            active = set(owners.tolist())
            if len(active) >= n or not flag:
                return ([i for i in chosen if i in active] if flag else chosen), true_gains
        rest = np.setdiff1d(np.arange(n_rows), chosen)
        gain = cost.sum(axis=1) - np.abs(col_min - cost).sum(axis=1)
        e = int(rest[gain[rest].argmin()])
        true_gains.append(float(np.minimum(cost[e] - col_min, 0).sum()))
        chosen.append(e)
        col_min = cost[chosen].min(axis=0)


@pytest.mark.parametrize(("seed", "trim"), [(s, t) for s in range(4) for t in (False, True)])
def test_lazy_greedy_equals_dense_reference(seed, trim):
    rng = np.random.default_rng(seed)
    cost = rng.random((60, 25)).astype(np.float32)
    n = 8
    ours = greedy_init(cost, n, trim_inactive=trim)
    np.testing.assert_array_equal(ours.indices, greedy_dense(cost, n, trim_inactive=trim).indices)
    ref, gains = _reference_greedy(cost.astype(np.float64), n, trim)
    if trim:  # flag set (25 distinct arg-mins > 8): no zero gains, the whole result must agree
        assert ours.trimmed == (ours.n_added > n)
        assert ours.indices.tolist() == ref
    else:  # compare the prefix chosen with strictly negative gains (addendum to §3)
        k = 1 + sum(1 for g in gains if g < -1e-9)
        assert ours.indices[: min(k, n)].tolist() == ref[: min(k, n)]
    assert ours.n_gain_evals < greedy_dense(cost, n, trim_inactive=trim).n_gain_evals


def test_zero_gain_fill_uses_smallest_row_sums():
    cost = np.array(
        [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.9, 0.9, 0.9], [0.2, 0.3, 0.6]],
        dtype=np.float32,
    )
    res = greedy_init(cost, 4)
    # rows 0 and 1 cover every column's min; the rest have gain 0 → by row sum: 4 (1.1), 2 (1.5)
    assert res.indices.tolist() == [0, 1, 4, 2]
    assert res.n_zero_gain == 2
    np.testing.assert_array_equal(res.indices, greedy_dense(cost, 4).indices)


def test_greedy_on_mixture_matches_dense_exactly():
    train, valid, grads = _problem(5, 400, 150, dim=8)
    cost = cost_matrix(train, valid, grads, lam=0.5).values
    for trim in (False, True):
        np.testing.assert_array_equal(
            greedy_init(cost, 40, trim_inactive=trim).indices,
            greedy_dense(cost, 40, trim_inactive=trim).indices,
        )


def test_exhaustive_small_instances_bound_greedy():
    """Enumerate every S (N=10, n=3): greedy and OT agree with brute force bookkeeping."""
    train, valid, grads = _problem(6, 10, 6)
    cost = cost_matrix(train, valid, grads, lam=0.5).values
    values = {s: solve_ot(cost[list(s)]).value for s in itertools.combinations(range(10), 3)}
    best = min(values.values())
    greedy = greedy_init(cost, 3).indices
    assert values[tuple(sorted(greedy.tolist()))] >= best - 1e-12


def test_feature_table_head_slices_every_per_row_field():
    from goracs_ray.select.types import FeatureTable

    rng = np.random.default_rng(0)
    table = FeatureTable(
        train_ids=np.arange(10),
        train_emb=rng.normal(size=(10, 3)),
        valid_emb=rng.normal(size=(6, 3)),
        grad_norms=np.arange(10.0),
        train_grad_proj=rng.normal(size=(10, 2)),
        valid_grad_proj=rng.normal(size=(6, 2)),
        train_groups={"user": np.arange(10) % 3},
    )
    small = table.head(4, 2)
    assert (small.n_train, small.n_valid) == (4, 2)
    np.testing.assert_array_equal(small.grad_norms, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(small.valid_grad_proj, table.valid_grad_proj[:2])
    np.testing.assert_array_equal(small.train_groups["user"], [0, 1, 2, 0])
    assert small.train_losses is None
