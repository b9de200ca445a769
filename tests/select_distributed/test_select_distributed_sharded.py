"""Pure row-shard pieces (no Ray): identical rows, exact lazy best, exact screened candidates."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from goracs_ray.select.cost import cost_matrix, cost_scales
from goracs_ray.select.greedy import greedy_gains
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.refine import Estimator, all_scores, dual_columns
from goracs_ray.select.sharded import CostShard, merge_column_argmin, shard_bounds


def _shards(train, valid, grads, n_shards, lam=0.1):
    shards = [
        CostShard(train[a:b], valid, grads[a:b], start=a)
        for a, b in shard_bounds(len(train), n_shards)
    ]
    scales = cost_scales(
        np.concatenate([s.extrema()[0] for s in shards]),
        np.concatenate([s.extrema()[1] for s in shards]),
        grads,
        lam=lam,
    )
    for shard in shards:
        shard.normalize(scales)
    return shards


def test_core_modules_do_not_import_ray():
    root = Path(__file__).resolve().parents[2] / "goracs_ray" / "select"
    for name in ("sharded.py", "cost.py", "greedy.py", "refine.py", "itra.py", "ot.py",
                 "rowstore.py", "options.py", "checkpoint.py", "kernels.py"):  # fmt: skip
        tree = ast.parse((root / name).read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert "ray" not in imported, name


def test_shard_bounds_cover_rows_and_align_to_blocks():
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert shard_bounds(5000, 2, align=1024) == [(0, 3072), (3072, 5000)]


def test_shards_rebuild_the_serial_cost_and_column_argmin(make_problem):
    train, valid, grads = make_problem(0)
    shards = _shards(train, valid, grads, 3)
    full = cost_matrix(train, valid, grads, lam=0.1).values
    np.testing.assert_array_equal(np.vstack([s.cost for s in shards]), full)
    _, owner = merge_column_argmin([s.column_argmin() for s in shards])
    np.testing.assert_array_equal(owner, full.argmin(axis=0))


def test_greedy_best_is_the_exact_argmin_across_shards_and_survives_a_rebuild(make_problem):
    train, valid, grads = make_problem(1)
    shards = _shards(train, valid, grads, 3)
    full = cost_matrix(train, valid, grads, lam=0.1).values
    chosen = [int(np.argmin(full.sum(axis=1)))]
    col_min = full[chosen[0]].copy()
    for step in range(12):
        if step == 6:  # a restarted shard rebuilds its heap from the call's arguments
            shards[1] = CostShard(train[100:200], valid, grads[100:200], start=100)
            shards[1].normalize(shards[0].scales)
        answers = [s.greedy_best(col_min, np.array(chosen)) for s in shards]
        gain, row, _ = min((a for a in answers if a is not None), key=lambda a: (a[0], a[1]))
        gains = greedy_gains(full, col_min)
        gains[chosen] = np.inf
        assert row == int(np.argmin(gains))
        assert gain == gains[row]
        chosen.append(row)
        np.minimum(col_min, full[row], out=col_min)


@pytest.mark.parametrize("estimator", [Estimator.CORRECTED, Estimator.FAITHFUL])
def test_screened_candidates_equal_the_dense_top_cut(make_problem, estimator):
    train, valid, grads = make_problem(2, n_train=3000)  # > 256 rows per shard: screening is used
    shards = _shards(train, valid, grads, 2)
    full = cost_matrix(train, valid, grads, lam=0.1).values
    members = np.array([5, 400, 770, 1200, 1500, 1501, 1990, 2600, 2999, 3])
    sol = solve_ot(full[members])
    duals = dual_columns(full[members].astype(np.float64), sol.u, members)
    dense = all_scores(full, members, duals, estimator=estimator)
    outside = np.setdiff1d(np.arange(len(full)), members)
    answers = [s.candidates(duals, members, cut_num=7, estimator=estimator) for s in shards]
    for shard, ans in zip(shards, answers):
        own = outside[(outside >= shard.start) & (outside < shard.stop)]
        want = own[np.lexsort((own, dense[own]))[:7]]
        np.testing.assert_array_equal(ans.outer, np.sort(want))
        np.testing.assert_array_equal(ans.outer_scores, dense[ans.outer])
        np.testing.assert_array_equal(ans.member_scores, dense[ans.members])
        np.testing.assert_array_equal(ans.outer_rows, full[ans.outer])
    if estimator is Estimator.CORRECTED:
        assert sum(a.n_scored for a in answers) < len(full) / 2
