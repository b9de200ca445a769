"""Embedding-geometry baselines: k-center greedy (coverage) and Moderate (median distance)."""

from __future__ import annotations

import numpy as np

from goracs_ray.select.baselines._common import check_budget, make_selection, top_n
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["covering_radius", "moderate_distances", "select_kcenter", "select_moderate"]


def covering_radius(emb: np.ndarray, centers: np.ndarray, *, block_size: int = 4096) -> float:
    """``max_i min_{c ∈ centers} ‖x_i − x_c‖₂`` over all rows of ``emb`` (N, d).

    Memory: O(block_size · |centers|).
    """
    x = emb.astype(np.float64)
    c = x[centers]
    c_sq = np.einsum("ij,ij->i", c, c)
    radius = 0.0
    for start in range(0, x.shape[0], block_size):
        xb = x[start : start + block_size]
        d2 = np.einsum("ij,ij->i", xb, xb)[:, None] + c_sq[None, :] - 2.0 * xb @ c.T
        radius = max(radius, float(np.sqrt(max(d2.min(axis=1).max(), 0.0))))
    return radius


@register_selector("kcenter")
def select_kcenter(features: FeatureTable, n: int, *, seed: int) -> Selection:
    """k-center greedy on the training embeddings.

    The first center is drawn uniformly with ``seed``; then repeatedly
    ``c_{t+1} = argmax_i min_{c ∈ S_t} ‖x_i − x_c‖₂`` (ties by row index), a 2-approximation of the
    minimax covering radius ``min_S max_i min_{c ∈ S} ‖x_i − x_c‖``. ``info["covering_radius"]`` is
    the final radius.

    Reference: Sener, Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach", ICLR 2018 (Algorithm 1); Gonzalez, TCS 1985.

    Time: O(n · N · d). Memory: O(N · d) float64.
    """
    check_budget(features, n)
    x = features.train_emb.astype(np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    rng = np.random.default_rng(seed)
    indices = np.empty(n, dtype=np.int64)
    indices[0] = int(rng.integers(features.n_train))
    min_d2 = np.full(features.n_train, np.inf)
    for step in range(n):
        if step:
            indices[step] = int(np.argmax(min_d2))
        c = indices[step]
        d2 = np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0)  # ‖x_i − x_c‖², one mat-vec
        np.minimum(min_d2, d2, out=min_d2)
        min_d2[indices[: step + 1]] = -1.0  # never re-pick a center (covers exact duplicates)
    radius = float(np.sqrt(max(min_d2.max(), 0.0)))
    return make_selection(features, indices, "kcenter", {"seed": seed, "covering_radius": radius})


def moderate_distances(emb: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Distance of each row to its class center (class mean), or to the global mean without labels.

    Parameters
    ----------
    emb : (N, d) float
    labels : (N,) int or None

    Returns
    -------
    (N,) float64
    """
    x = emb.astype(np.float64)
    if labels is None:
        return np.linalg.norm(x - x.mean(axis=0), axis=1)
    classes, inverse = np.unique(labels, return_inverse=True)
    centers = np.zeros((len(classes), x.shape[1]))
    np.add.at(centers, inverse, x)
    centers /= np.bincount(inverse, minlength=len(classes))[:, None]
    return np.linalg.norm(x - centers[inverse], axis=1)


@register_selector("moderate")
def select_moderate(
    features: FeatureTable, n: int, *, seed: int, use_labels: bool = True
) -> Selection:
    """Moderate coreset: the ``n`` samples whose distance to their center is closest to the median.

    ``d_i = ‖z_i − c_{y_i}‖₂`` with ``c_y`` the mean embedding of class ``y`` (``train_labels``,
    when present and ``use_labels``) or the global mean; ``S = top-n of −|d_i − median_j d_j|``
    (global median, as the reference code), ties by row index. Deterministic (``seed`` unused).

    Reference: Xia, Liu, Yu, Shen, Han, Liu, "Moderate Coreset: A Universal Method of Data Selection
    for Real-world Data-efficient Deep Learning", ICLR 2023.
    """
    check_budget(features, n)
    labels = features.train_labels if use_labels else None
    dist = moderate_distances(features.train_emb, labels)
    median = float(np.median(dist))
    indices = top_n(np.abs(dist - median), n, largest=False)
    info = {"seed": seed, "center": "class" if labels is not None else "global", "median": median}
    return make_selection(features, indices, "moderate", info)
