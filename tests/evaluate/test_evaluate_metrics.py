"""Evaluation metrics on hand-checkable cases (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from goracs_ray.evaluate.config import EvalConfig
from goracs_ray.evaluate.grounding import candidate_distances
from goracs_ray.evaluate.metrics import (
    auc,
    hit_rate_at_k,
    log_loss,
    ndcg_at_k,
    rank_of_target,
    ranking_metrics,
)


def test_known_ranks_give_known_ndcg_and_hr():
    ranks = np.array([0, 1, 4, 9, 50])
    # NDCG@5: 1, 1/log2(3), 1/log2(6), 0, 0 over 5 samples.
    expected_ndcg5 = (1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(6)) / 5
    np.testing.assert_allclose(ndcg_at_k(ranks, 5), expected_ndcg5)
    np.testing.assert_allclose(hit_rate_at_k(ranks, 5), 3 / 5)
    np.testing.assert_allclose(hit_rate_at_k(ranks, 1), 1 / 5)
    np.testing.assert_allclose(ndcg_at_k(ranks, 1), 1 / 5)
    np.testing.assert_allclose(hit_rate_at_k(ranks, 10), 4 / 5)
    expected_ndcg10 = expected_ndcg5 + (1.0 / math.log2(11)) / 5
    np.testing.assert_allclose(ndcg_at_k(ranks, 10), expected_ndcg10)
    m = ranking_metrics(ranks, [20, 1, 5, 10])
    assert list(m) == ["ndcg@1", "hr@1", "ndcg@5", "hr@5", "ndcg@10", "hr@10", "ndcg@20", "hr@20"]
    np.testing.assert_allclose(m["hr@20"], 4 / 5)


def test_rank_of_target_counts_ties_against_the_target():
    d = np.array([[0.5, 0.1, 0.9, 0.5], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(rank_of_target(d), [2, 0, 3])


def test_candidate_distances_take_the_nearest_beam():
    items = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]]], dtype=np.float32)  # 2 beams
    d = candidate_distances(pred, items, np.array([[2, 0, 1]]))
    np.testing.assert_allclose(d, [[1.0, 0.0, 0.0]])


def test_known_scores_give_known_auc():
    y = np.array([1, 0, 1, 0])
    np.testing.assert_allclose(auc(y, np.array([0.9, 0.1, 0.8, 0.2])), 1.0)
    np.testing.assert_allclose(auc(y, np.array([0.1, 0.9, 0.2, 0.8])), 0.0)
    # Pairs (pos, neg): (0.9,0.3) win, (0.9,0.5) win, (0.4,0.3) win, (0.4,0.5) loss → 3/4.
    np.testing.assert_allclose(auc(y, np.array([0.9, 0.3, 0.4, 0.5])), 0.75)
    # All tied → 1/2.
    np.testing.assert_allclose(auc(y, np.full(4, 0.7)), 0.5)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=40)
    s = rng.integers(0, 5, size=40).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
    np.testing.assert_allclose(auc(y, s), brute)


def test_log_loss_known_value():
    np.testing.assert_allclose(
        log_loss(np.array([1, 0]), np.array([0.8, 0.4])), -(math.log(0.8) + math.log(0.6)) / 2
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ndcg_at_k(np.array([-1]), 5), "ranks"),
        (lambda: ndcg_at_k(np.array([1]), 0), "k"),
        (lambda: auc(np.array([0, 2]), np.array([0.1, 0.2])), "labels"),
        (lambda: auc(np.array([0, 1]), np.array([0.1])), "labels"),
        (lambda: EvalConfig(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (lambda: EvalConfig(ks=[0]), "ks"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_losses_and_mean_ranks_are_lower_is_better():
    from goracs_ray.stats import lower_is_better

    for name in ("test_loss", "log_loss", "mean_rank", "grounded_mean_rank"):
        assert lower_is_better(name), name
    for name in ("ndcg@10", "grounded_hr@5", "auc", "accuracy"):
        assert not lower_is_better(name), name
