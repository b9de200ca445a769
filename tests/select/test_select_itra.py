"""ITRA refinement, estimators (corrected and faithful), label-enhanced budgets, determinism."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from goracs_ray.select import FeatureTable, run_selector, select_coreset
from goracs_ray.select.cost import cost_matrix
from goracs_ray.select.greedy import greedy_init
from goracs_ray.select.itra import itra, label_budgets
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.refine import (
    Estimator,
    all_scores,
    candidate_pairs,
    dual_columns,
    pruning_scores,
    refine,
)


def _mixture(seed: int, n_train: int, n_valid: int, dim: int = 8, k: int = 4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3
    train = centers[rng.integers(0, k, n_train)] + rng.normal(size=(n_train, dim))
    valid = centers[rng.integers(0, k, n_valid)] + rng.normal(size=(n_valid, dim))
    grads = rng.lognormal(0.0, 0.5, n_train)
    return train.astype(np.float32), valid.astype(np.float32), grads.astype(np.float32)


def _cost(seed, n_train, n_valid, **kw):
    train, valid, grads = _mixture(seed, n_train, n_valid, **kw)
    return cost_matrix(train, valid, grads, lam=0.5).values


def _manual_scores(cost, members, u, *, corrected):
    """F(k) straight from METHOD.md §4, one row at a time."""
    n, m_cols = len(members), cost.shape[1]
    rank = math.ceil(m_cols / n)
    reduced_s = cost[members].astype(np.float64) - u[:, None]
    out = np.empty(cost.shape[0])
    for k in range(cost.shape[0]):
        others = [p for p, r in enumerate(members) if r != k] if corrected else range(n)
        f = reduced_s[list(others)].min(axis=0)
        vals = np.sort(cost[k] - f)
        y = vals[rank - 1] if corrected else vals[::-1][rank - 1]
        out[k] = np.minimum(cost[k] - y - f, 0).mean() + y / n
    return out


@pytest.mark.parametrize("estimator", list(Estimator))
def test_pruning_scores_match_the_definition(estimator):
    cost = _cost(0, 30, 17)
    members = greedy_init(cost, 5).indices
    sol = solve_ot(cost[members])
    duals = dual_columns(cost[members], sol.u, members)
    got = all_scores(cost, members, duals, estimator=estimator)
    want = _manual_scores(cost, members, sol.u, corrected=estimator is Estimator.CORRECTED)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # block split (shards with ascending row ids) changes nothing
    parts = [
        pruning_scores(cost[a:b], np.arange(a, b), duals, n=5, estimator=estimator)
        for a, b in ((0, 11), (11, 30))
    ]
    np.testing.assert_array_equal(np.concatenate(parts), got)


def test_faithful_quirks():
    cost = _cost(1, 40, 23)
    members = greedy_init(cost, 6).indices
    sol = solve_ot(cost[members])
    duals = dual_columns(cost[members], sol.u, members)
    faithful = all_scores(cost, members, duals, estimator=Estimator.FAITHFUL)
    corrected = all_scores(cost, members, duals, estimator=Estimator.CORRECTED)
    outside = np.setdiff1d(np.arange(40), members)
    assert not np.allclose(faithful[outside], corrected[outside])  # R-th largest vs smallest
    # no-op mask: a member's faithful score uses the plain min, which its own row attains
    # somewhere, so (c - f) has zeros; the corrected one excludes itself.
    pairs = candidate_pairs(faithful, members, cut_num=3, estimator=Estimator.FAITHFUL)
    inner = members[np.argsort(faithful[members], kind="stable")[-3:]]
    outer = outside[np.argsort(faithful[outside], kind="stable")[:3]]
    assert pairs.tolist() == [list(p) for p in itertools.product(inner, outer)]
    assert faithful[inner[0]] <= faithful[inner[-1]]  # worst-first: smallest F tried first
    # the reference's active-support trim is on by default in faithful mode only
    uniform = np.random.default_rng(3).random((60, 25)).astype(np.float32)
    trimmed = greedy_init(uniform, 8, trim_inactive=True)
    assert trimmed.trimmed
    assert trimmed.indices.tolist() != greedy_init(uniform, 8).indices.tolist()
    for est, want in (("faithful", trimmed), ("corrected", greedy_init(uniform, 8))):
        res = itra(uniform, 8, estimator=est, max_iters=1, cut_num=2)
        np.testing.assert_array_equal(res.greedy.indices, want.indices)


def test_corrected_pairs_follow_estimated_gain():
    cost = _cost(2, 40, 23)
    members = greedy_init(cost, 6).indices
    sol = solve_ot(cost[members])
    scores = all_scores(cost, members, dual_columns(cost[members], sol.u, members),
                        estimator=Estimator.CORRECTED)  # fmt: skip
    pairs = candidate_pairs(scores, members, cut_num=4)
    est = scores[pairs[:, 1]] - scores[pairs[:, 0]]
    assert (np.diff(est) >= 0).all()
    assert len(pairs) == 16


def test_corrected_estimate_ranks_true_improvement():
    """Spearman(estimate, true ΔPOO) over all pairs; median of 3 fixed mixtures ≥ 0.9."""
    corr = {e: [] for e in Estimator}
    for seed in range(3):
        cost = _cost(seed, 80, 400, dim=16)
        members = greedy_init(cost, 16).indices
        sol = solve_ot(cost[members])
        duals = dual_columns(cost[members], sol.u, members)
        outside = np.setdiff1d(np.arange(80), members)
        truth = []
        for pos in range(16):
            for o in outside:
                swapped = members.copy()
                swapped[pos] = o
                truth.append(solve_ot(cost[swapped]).value - sol.value)
        for est in Estimator:
            f = all_scores(cost, members, duals, estimator=est)
            guess = (f[outside][None, :] - f[members][:, None]).ravel()
            corr[est].append(spearmanr(truth, guess)[0])
    assert np.median(corr[Estimator.CORRECTED]) >= 0.9, corr
    assert np.median(corr[Estimator.CORRECTED]) > np.median(corr[Estimator.FAITHFUL]), corr


@pytest.mark.parametrize("seed", range(4))
def test_itra_never_worse_than_greedy_on_enumerable_problems(seed):
    cost = _cost(seed, 12, 7)
    for n in (2, 3, 4):
        values = [solve_ot(cost[list(s)]).value for s in itertools.combinations(range(12), n)]
        for est in Estimator:
            res = itra(cost, n, estimator=est, max_iters=20, cut_num=12)
            final = solve_ot(cost[res.indices]).value
            np.testing.assert_allclose(final, res.poo, atol=1e-12)
            assert res.poo <= res.poo_greedy + 1e-12
            assert final >= min(values) - 1e-12
            assert (np.diff(res.poo_trace) < 0).all()


def test_refinement_trace_decreases_and_batches_agree():
    cost = _cost(7, 300, 120)
    start = greedy_init(cost, 15).indices
    one = refine(cost, start, max_iters=15, cut_num=8)
    assert (np.diff(one.poo_trace) < 0).all()
    assert one.n_ot_solves == 1 + one.n_pairs_tried
    batched = refine(cost, start, max_iters=15, cut_num=8, batch_size=4)
    assert (np.diff(batched.poo_trace) < 0).all()
    assert batched.poo_trace[-1] <= one.poo_trace[0]
    cold = refine(cost, start, max_iters=15, cut_num=8, warm_start=False)
    np.testing.assert_allclose(cold.poo_trace, one.poo_trace, atol=1e-12)


def test_determinism_and_caller_ids():
    train, valid, grads = _mixture(8, 200, 80)
    ids = np.array([f"s{i:04d}" for i in range(200)])
    a = select_coreset(train, valid, grads, 12, 0.5, ids=ids, max_iters=10, cut_num=6)
    b = select_coreset(train, valid, grads, 12, 0.5, ids=ids, max_iters=10, cut_num=6)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.ids, ids[a.indices])
    assert len(set(a.ids.tolist())) == 12
    assert a.trace()["parts"][0]["poo_trace"] == b.trace()["parts"][0]["poo_trace"]


def test_label_budgets_split_by_validation_shares():
    train = np.array([0] * 50 + [1] * 30 + [2] * 20)
    valid = np.array([0] * 5 + [1] * 3 + [2] * 2)
    assert label_budgets(train, valid, 10) == {0: 5, 1: 3, 2: 2}
    budgets = label_budgets(train, valid, 7)
    assert sum(budgets.values()) == 7
    assert budgets == {0: 4, 1: 2, 2: 1}  # round(2.1) = 2, round(1.4) = 1, class 0 the rest
    with pytest.raises(ValueError, match=r"`budget` gives class 2"):
        label_budgets(train, np.array([2] * 9 + [0]), 30)


def test_label_enhanced_selection_stays_within_classes():
    train, valid, grads = _mixture(9, 150, 60)
    rng = np.random.default_rng(9)
    tl, vl = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    res = select_coreset(train, valid, grads, 15, 0.5, train_labels=tl, valid_labels=vl,
                         max_iters=5, cut_num=5)  # fmt: skip
    assert len(res.indices) == 15
    np.testing.assert_array_equal(tl[res.indices], res.classes)
    want = label_budgets(tl, vl, 15)
    assert {c: int((res.classes == c).sum()) for c in want} == want
    # faithful CTR path: distances are not divided by their max before the gradient term
    features = FeatureTable(train_ids=np.arange(150), train_emb=train, valid_emb=valid,
                            grad_norms=grads, train_labels=tl, valid_labels=vl)  # fmt: skip
    sel = run_selector("goracs", features, 15, lam=0.5, estimator="faithful", max_iters=2,
                       cut_num=3)  # fmt: skip
    cls = int(sel.classes[0])
    rows = np.flatnonzero(tl == cls)
    cost = cost_matrix(train[rows], valid[vl == cls], grads[rows], lam=0.5,
                       divide_distance=False, grad_max=float(grads.max())).values  # fmt: skip
    part = itra(cost, want[cls], estimator="faithful", max_iters=2, cut_num=3)
    np.testing.assert_array_equal(sel.indices[: want[cls]], rows[part.indices])


def test_bad_arguments_name_the_argument():
    train, valid, grads = _mixture(10, 30, 10)
    with pytest.raises(ValueError, match="`lam`"):
        select_coreset(train, valid, grads, 5, -0.1)
    with pytest.raises(ValueError, match="`budget`"):
        select_coreset(train, valid, grads, 31, 0.5)
    with pytest.raises(ValueError, match="`budget`"):
        select_coreset(train, valid, grads, 0, 0.5)
    with pytest.raises(ValueError, match="`estimator`"):
        select_coreset(train, valid, grads, 5, 0.5, estimator="nope")
    with pytest.raises(ValueError, match="grad_norms"):
        select_coreset(train, valid, None, 5, 0.5)
    with pytest.raises(ValueError, match="`valid_emb`"):
        select_coreset(train, valid[:0], grads, 5, 0.5)
    bad = train.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`train_emb`"):
        select_coreset(bad, valid, grads, 5, 0.5)


def test_registry_methods():
    train, valid, grads = _mixture(11, 60, 20)
    features = FeatureTable(train_ids=np.arange(60) + 1000, train_emb=train, valid_emb=valid,
                            grad_norms=grads)  # fmt: skip
    greedy = run_selector("goracs_greedy", features, 6, lam=0.5)
    full = run_selector("goracs", features, 6, lam=0.5, max_iters=5)
    np.testing.assert_array_equal(greedy.indices, greedy_init(
        cost_matrix(train, valid, grads, lam=0.5).values, 6).indices)  # fmt: skip
    assert full.info["parts"][0]["poo_final"] <= greedy.info["parts"][0]["poo_final"] + 1e-12
    assert (full.ids >= 1000).all()


def test_select_package_imports_neither_ray_nor_torch():
    """Nor does a GORACS selection with ``device: cpu`` (the torch kernels stay unloaded)."""
    code = (
        "import sys\nimport goracs_ray\nimport goracs_ray.select.cli, goracs_ray.select.config\n"
        "from goracs_ray.select.ot import solve_ot\nimport numpy as np\n"
        "solve_ot(np.ones((2, 3)))\n"
        "from goracs_ray.select import FeatureTable\n"
        "from goracs_ray.select.config import SelectConfig, run_select\n"
        "rng = np.random.default_rng(0)\n"
        "t = FeatureTable(train_ids=np.arange(40), train_emb=rng.normal(size=(40, 4)),\n"
        "                 valid_emb=rng.normal(size=(9, 4)), grad_norms=rng.random(40))\n"
        "s = run_select(SelectConfig(budget=4, lam=0.5, max_iters=2, device='cpu'), t)\n"
        "assert s.info['settings']['device'] == 'cpu'\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'torch')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
