"""Defining properties of CCS, D2 Pruning and DEALRec (coverage, diversity, influence, effort)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from goracs_ray.select import run_selector
from goracs_ray.select.baselines._common import coverage_sample, equal_width_bins
from goracs_ray.select.baselines.d2 import knn_graph
from goracs_ray.select.baselines.dealrec import (
    SurrogateSettings,
    minmax,
    surrogate_influence,
    train_surrogate,
)


def _assert_water_filling(bins, selected, n):
    """Each non-empty bin is covered (n >= #bins); the budget is spread as evenly as sizes allow.

    Water-filling: bins not taken whole get q or q + 1 picks, and every bin taken whole has at
    most q + 1 rows (q = the smallest pick count of a bin not taken whole).
    """
    ids, sizes = np.unique(bins, return_counts=True)
    counts = np.array([(bins[selected] == b).sum() for b in ids])
    assert counts.sum() == n
    if n >= len(ids):
        assert counts.min() >= 1
    partial = counts[counts < sizes]
    if len(partial):
        assert partial.max() - partial.min() <= 1
        assert np.all(sizes[counts == sizes] <= partial.min() + 1)


def test_coverage_sample_spreads_the_budget_over_bins():
    rng = np.random.default_rng(0)
    for _ in range(100):
        bins = rng.integers(0, rng.integers(1, 9), size=rng.integers(1, 60)) ** 2
        n = int(rng.integers(1, len(bins) + 1))
        picks, trace = coverage_sample(bins, n, rng)
        assert len(np.unique(picks)) == n
        _assert_water_filling(bins, picks, n)
        assert sum(trace["bin_counts"]) == n


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (20, 0.2), (33, 0.0), (49, 0.2)])
def test_ccs_drops_the_hardest_fraction_and_spreads_over_bins(n, beta, features):
    sel = run_selector("ccs", features, n, seed=1, beta=beta, n_bins=6)
    scores = features.grad_norms.astype(np.float64)
    n_drop = int(np.floor(beta * 61))
    hardest = np.argsort(-scores, kind="stable")[:n_drop]
    assert not set(hardest.tolist()) & set(sel.indices.tolist())
    assert sel.info["n_dropped"] == n_drop
    kept = np.setdiff1d(np.arange(61), hardest)
    bins = np.full(61, -1)
    bins[kept] = equal_width_bins(scores[kept], 6)
    _assert_water_filling(bins[kept], np.searchsorted(kept, sel.indices), n)


def test_ccs_keeps_the_budget_when_the_cutoff_would_leave_too_few(features, caplog):
    scores = features.grad_norms.astype(np.float64)
    with caplog.at_level(logging.WARNING, logger="goracs_ray.select.baselines.ccs"):
        sel = run_selector("ccs", features, 55, seed=0, beta=0.2)
    assert "dropping only 6" in caplog.text
    assert sel.info["n_dropped"] == 6
    assert not set(np.argsort(-scores, kind="stable")[:6].tolist()) & set(sel.indices.tolist())


def test_ccs_with_loss_scores_drops_the_highest_losses(features):
    sel = run_selector("ccs", features, 10, seed=0, beta=0.3, score="loss")
    hardest = np.argsort(-features.train_losses.astype(np.float64), kind="stable")[:18]
    assert not set(hardest.tolist()) & set(sel.indices.tolist())


def test_knn_graph_matches_brute_force_in_any_block_size():
    x = np.random.default_rng(2).normal(size=(40, 3))
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    want = np.argsort(dist, axis=1, kind="stable")[:, :5]
    for block in (1, 7, 1024):
        graph = knn_graph(x, 5, block_size=block)
        np.testing.assert_array_equal(graph.neighbors, want)
        np.testing.assert_allclose(
            graph.distances, np.take_along_axis(dist, want, 1), rtol=1e-7, atol=1e-7
        )


def _d2_clusters(build_features):
    """5 tight clusters of 6 hard points (cluster 0 hardest) + 31 easy points spread far apart."""
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=50.0, size=(5, 6))
    cluster_of = np.repeat(np.arange(5), 6)
    emb = np.concatenate(
        [
            centers[cluster_of] + rng.normal(scale=0.01, size=(30, 6)),
            rng.normal(scale=50.0, size=(31, 6)),
        ]
    )
    difficulty = np.concatenate([10.0 - cluster_of + rng.uniform(0, 0.1, 30), np.ones(31)])
    labels = np.concatenate([cluster_of, np.full(31, -1)])
    return build_features(train_emb=emb, grad_norms=difficulty), labels


def test_d2_prefers_hard_points_but_spreads_over_clusters(build_features):
    feats, cluster = _d2_clusters(build_features)
    sel = run_selector("d2", feats, 5, seed=0, k=6)
    picked = cluster[sel.indices]
    assert sorted(picked.tolist()) == [0, 1, 2, 3, 4]  # hard (no easy point) and diverse
    assert picked[0] == 0  # the first pick is the hardest region
    # GraNd on the same input is not diverse: its top 5 all sit in cluster 0.
    assert set(cluster[run_selector("grand", feats, 5, seed=0).indices].tolist()) == {0}


def test_d2_without_reverse_passing_is_top_n_of_forward_scores(build_features):
    feats, cluster = _d2_clusters(build_features)
    sel = run_selector("d2", feats, 5, seed=0, k=6, gamma_reverse=1e9)
    graph = knn_graph(feats.train_emb, 6)
    s = feats.grad_norms.astype(np.float64)
    forward = s + (np.exp(-1.0 * graph.distances) * s[graph.neighbors]).sum(axis=1)
    assert sel.indices.tolist() == np.argsort(-forward, kind="stable")[:5].tolist()
    assert set(cluster[sel.indices].tolist()) == {0}
    np.testing.assert_allclose(sel.info["forward_score_first"], forward.max(), rtol=1e-12)


def test_surrogate_influence_matches_dense_inverse_hessian():
    rng = np.random.default_rng(4)
    users, items = rng.integers(4, size=25), rng.integers(5, size=25)
    settings = SurrogateSettings(dim=2, epochs=30, n_neg=2, cg_iters=200)
    model = train_surrogate(users, items, seed=0, settings=settings)
    theta = model.theta
    hess = torch.autograd.functional.hessian(lambda t: model.losses(t).mean(), theta)
    hess = hess + (settings.weight_decay + settings.damping) * torch.eye(
        theta.numel(), dtype=theta.dtype
    )
    jac = torch.autograd.functional.jacobian(model.losses, theta)  # (N, P)
    want = (jac @ torch.linalg.solve(hess, jac.mean(dim=0))).numpy() / 25
    got = surrogate_influence(model, settings)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert np.abs(want).max() > 0  # a non-trivial certificate


FAST = {"epochs": 20, "cg_iters": 10}


def test_dealrec_selection_covers_the_score_bins(features):
    sel = run_selector("dealrec", features, 20, seed=2, n_bins=8, lam=1.0, **FAST)
    settings = SurrogateSettings(**FAST)
    users, items = features.train_groups["user"], features.train_groups["item"]
    influence = surrogate_influence(
        train_surrogate(users, items, seed=2, settings=settings), settings
    )
    scores = minmax(influence) + 1.0 * minmax(features.grad_norms.astype(np.float64))
    bins = equal_width_bins(scores, 8)
    _assert_water_filling(bins, sel.indices, 20)
    assert sorted(sel.info["bin_ids"]) == np.unique(bins).tolist()


def test_dealrec_uses_the_effort_score(build_features):
    norms = np.random.default_rng(5).gamma(2.0, size=61)
    outliers = np.array([4, 30, 57])
    norms[outliers] = 1000.0  # samples the LLM finds hardest (largest effort)
    feats = build_features(grad_norms=norms)
    for seed in range(3):
        sel = run_selector("dealrec", feats, 10, seed=seed, n_bins=8, lam=10.0, **FAST)
        assert set(outliers.tolist()) <= set(sel.indices.tolist())
    no_effort = [
        set(outliers.tolist())
        <= set(
            run_selector("dealrec", feats, 10, seed=s, n_bins=8, lam=0.0, **FAST).indices.tolist()
        )
        for s in range(3)
    ]
    assert not all(no_effort)
