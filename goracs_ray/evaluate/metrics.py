"""Pure evaluation metrics: ranks → NDCG@K / HR@K, scores → AUC / log-loss. numpy only.

SeqRec follows BIGRec: each test sample has exactly one relevant item (the target), ranked among
itself and its stored negatives, so NDCG@K = 1 / log2(rank + 2) when rank < K, else 0 (rank 0-based)
and HR@K = 1 when rank < K. CTR follows TALLRec: AUC of P(Yes) against the like label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auc", "hit_rate_at_k", "log_loss", "ndcg_at_k", "rank_of_target", "ranking_metrics"]


def rank_of_target(distances: np.ndarray) -> np.ndarray:
    """0-based rank of the target (column 0) among its candidates, ties counted against it.

    Parameters
    ----------
    distances : (B, C) float
        Distance of each candidate to the prediction, column 0 the target, columns 1.. the
        negatives. Smaller is better.

    Returns
    -------
    ranks : (B,) int64
        Number of negatives at a distance ≤ the target's (pessimistic on ties, so a model that
        scores everything alike gets the worst rank, not the best).
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 1:
        raise ValueError(f"`distances` must be (B, C) with C ≥ 1, got shape {d.shape}")
    return (d[:, 1:] <= d[:, :1]).sum(axis=1).astype(np.int64)


def _check_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1 or not np.issubdtype(r.dtype, np.integer) or (r < 0).any():
        raise ValueError("`ranks` must be a 1-D array of non-negative integers (0 = first)")
    if k < 1:
        raise ValueError(f"`k` must be ≥ 1, got {k}")
    return r


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@K with one relevant item per sample.

    Parameters
    ----------
    ranks : (B,) int
        0-based rank of the relevant item.
    k : int
        Cut-off.

    Returns
    -------
    float
        mean over samples of ``1 / log2(rank + 2)`` if ``rank < k`` else 0 (0.0 for B = 0).
    """
    r = _check_ranks(ranks, k)
    if r.size == 0:
        return 0.0
    gains = np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
    return float(gains.mean())


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean HR@K (recall@K with one relevant item): the share of samples with ``rank < k``."""
    r = _check_ranks(ranks, k)
    if r.size == 0:
        return 0.0
    return float((r < k).mean())


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"ndcg@K": ..., "hr@K": ...}`` for every K in ``ks`` (ordered by K)."""
    out: dict[str, float] = {}
    for k in sorted(ks):
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
        out[f"hr@{k}"] = hit_rate_at_k(ranks, k)
    return out


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(
            f"`labels` and `scores` must be 1-D of equal length, got {y.shape} and {s.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("`labels` must contain only 0 and 1")
    return y.astype(np.int64), s


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann–Whitney statistic, ties given half credit.

    Parameters
    ----------
    labels : (B,) int {0, 1}
    scores : (B,) float
        Higher = more likely positive.

    Returns
    -------
    float
        P(score of a random positive > score of a random negative) + ½ P(tie); NaN (with no
        error) when only one class is present, since AUC is undefined there.
    """
    y, s = _check_binary(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks (1-based) over ties: rank-sum form of Mann–Whitney U.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of P(positive), probabilities clipped to [eps, 1 − eps]."""
    y, p = _check_binary(labels, probs)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1.0 - p)).mean())
