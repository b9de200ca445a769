"""Defining properties of the ranking, geometry and stratified baselines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from goracs_ray.select import run_selector
from goracs_ray.select.baselines import covering_radius
from goracs_ray.select.baselines._common import largest_remainder
from goracs_ray.select.baselines.scores import LessReduce, el2n_scores, less_scores
from goracs_ray.select.baselines.uniform import popularity_bins


def _oracle_top(scores, n, *, largest=True):
    sign = -1.0 if largest else 1.0
    return sorted(range(len(scores)), key=lambda i: (sign * float(scores[i]), i))[:n]


@pytest.mark.parametrize("n", [1, 9, 30, 61])
def test_grand_picks_exactly_the_top_norms_ties_by_row_index(n, build_features):
    norms = np.random.default_rng(1).integers(0, 6, size=61).astype(np.float64)  # many ties
    feats = build_features(grad_norms=norms)
    sel = run_selector("grand", feats, n, seed=0)
    assert sel.indices.tolist() == _oracle_top(feats.grad_norms, n)


@pytest.mark.parametrize("n", [1, 9, 30])
def test_el2n_picks_exactly_the_top_errors(n, build_features):
    losses = np.random.default_rng(2).integers(0, 5, size=61) * 0.7
    feats = build_features(train_losses=losses)
    sel = run_selector("el2n", feats, n, seed=0)
    assert sel.indices.tolist() == _oracle_top(el2n_scores(feats.train_losses), n)
    assert sel.indices.tolist() == _oracle_top(feats.train_losses, n)  # monotone in the loss


def test_el2n_score_is_the_binary_error_norm_over_sqrt2():
    p_true = np.array([0.01, 0.3, 0.5, 0.9, 0.999])
    err = np.linalg.norm(np.stack([p_true - 1.0, 1.0 - p_true], axis=1), axis=1)
    np.testing.assert_allclose(np.sqrt(2.0) * el2n_scores(-np.log(p_true)), err, rtol=1e-12)


def test_less_picks_training_gradients_aligned_with_validation(build_features):
    rng = np.random.default_rng(3)
    k, n_aligned = 6, 10
    valid = np.zeros((9, k))  # M = 9 validation gradients along axes 0, 1, 2
    valid[np.arange(9), np.arange(9) % 3] = rng.uniform(0.5, 3.0, size=9)
    aligned = valid[rng.integers(9, size=n_aligned)] * rng.uniform(0.1, 9.0, size=(n_aligned, 1))
    aligned += rng.normal(scale=0.05, size=aligned.shape)
    others = np.zeros((51, k))
    others[:, 3:] = rng.normal(size=(51, 3))  # orthogonal to every validation gradient
    others[:20, :3] = -rng.uniform(0.1, 1.0, size=(20, 3))  # opposed to them
    train = np.concatenate([others[:25], aligned, others[25:]])
    feats = build_features(train_grad_proj=train, valid_grad_proj=valid)
    for reduce in ("max", "mean"):
        sel = run_selector("less", feats, n_aligned, seed=0, reduce=reduce)
        assert sorted(sel.indices.tolist()) == list(range(25, 25 + n_aligned))


@pytest.mark.parametrize("reduce", list(LessReduce))
def test_less_scores_match_brute_force_cosine_in_any_block_size(reduce):
    rng = np.random.default_rng(4)
    g, v = rng.normal(size=(23, 5)), rng.normal(size=(7, 5))
    g[3] = 0.0  # a zero gradient has cosine 0
    cos = np.array([[a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0) for b in v] for a in g])
    want = cos.max(axis=1) if reduce is LessReduce.MAX else cos.mean(axis=1)
    for block in (1, 5, 100):
        got = less_scores(g, v, reduce=reduce, block_size=block)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [4, 10])
def test_kcenter_covering_radius_beats_random_on_average(n, features):
    emb = features.train_emb
    sel = run_selector("kcenter", features, n, seed=0)
    radius = covering_radius(emb, sel.indices)
    np.testing.assert_allclose(sel.info["covering_radius"], radius, rtol=1e-9)
    random_radii = [
        covering_radius(emb, run_selector("random", features, n, seed=s).indices)
        for s in range(10)  # fixed trial count
    ]
    assert radius <= np.mean(random_radii)


def test_kcenter_is_within_twice_the_optimal_radius(build_features):
    feats = build_features(n=11, seed=7)
    emb = feats.train_emb
    opt = min(covering_radius(emb, np.array(c)) for c in itertools.combinations(range(11), 3))
    for seed in range(3):
        sel = run_selector("kcenter", feats, 3, seed=seed)
        assert covering_radius(emb, sel.indices) <= 2.0 * opt + 1e-9


@pytest.mark.parametrize("use_labels", [True, False])
def test_moderate_picks_the_rows_nearest_the_median_distance(use_labels, features):
    x = features.train_emb.astype(np.float64)
    if use_labels:
        y = features.train_labels
        centers = {c: x[y == c].mean(axis=0) for c in np.unique(y)}
        dist = np.array([np.linalg.norm(x[i] - centers[y[i]]) for i in range(len(x))])
    else:
        dist = np.linalg.norm(x - x.mean(axis=0), axis=1)
    gap = np.abs(dist - np.median(dist))
    sel = run_selector("moderate", features, 15, seed=0, use_labels=use_labels)
    assert sel.indices.tolist() == _oracle_top(gap, 15, largest=False)
    assert sel.info["center"] == ("class" if use_labels else "global")


def _assert_shares(strata, selected, n):
    labels, sizes = np.unique(strata, return_counts=True)
    counts = np.array([(strata[selected] == lab).sum() for lab in labels])
    share = n * sizes / sizes.sum()
    assert counts.sum() == n
    assert np.all(counts >= np.floor(share)), (counts, share)
    assert np.all(counts <= np.ceil(share)), (counts, share)


@pytest.mark.parametrize("n", [1, 8, 31, 60])
def test_stratified_user_matches_user_shares(n, features):
    sel = run_selector("stratified_user", features, n, seed=n)
    _assert_shares(features.train_groups["user"], sel.indices, n)


@pytest.mark.parametrize("n", [1, 8, 31, 60])
def test_stratified_popularity_matches_bin_shares(n, features):
    sel = run_selector("stratified_popularity", features, n, seed=n, n_bins=4)
    bins, popularity = popularity_bins(features.train_groups["item"], 4)
    _assert_shares(bins, sel.indices, n)
    assert sel.info["n_strata"] == len(np.unique(bins))


def test_popularity_bins_are_monotone_in_popularity():
    items = np.repeat(np.arange(8), [1, 1, 2, 3, 5, 8, 13, 21])
    bins, popularity = popularity_bins(items, 4)
    order = np.argsort(popularity, kind="stable")
    assert np.all(np.diff(bins[order]) >= 0)
    assert bins.max() > 0  # the head and the tail are separated
    np.testing.assert_array_equal(
        popularity, np.repeat([1, 1, 2, 3, 5, 8, 13, 21], [1, 1, 2, 3, 5, 8, 13, 21])
    )


def test_largest_remainder_is_proportional_and_exact():
    rng = np.random.default_rng(5)
    for _ in range(200):
        sizes = rng.integers(1, 20, size=rng.integers(1, 12))
        n = int(rng.integers(0, sizes.sum() + 1))
        counts = largest_remainder(sizes, n)
        share = n * sizes / sizes.sum()
        assert counts.sum() == n
        assert np.all((counts >= np.floor(share)) & (counts <= np.ceil(share)))
        assert np.all(counts <= sizes)
