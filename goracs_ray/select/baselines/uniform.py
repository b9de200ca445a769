"""Random baselines: uniform random and stratified random (by user, by item-popularity bin)."""

from __future__ import annotations

import numpy as np

from goracs_ray.select.baselines._common import (
    check_budget,
    largest_remainder,
    make_selection,
    require_group,
)
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = [
    "popularity_bins",
    "select_random",
    "select_stratified_popularity",
    "select_stratified_user",
    "stratified_random",
]


@register_selector("random")
def select_random(features: FeatureTable, n: int, *, seed: int) -> Selection:
    """Uniform random sample of ``n`` rows without replacement.

    ``S ~ Uniform({S ⊆ [N] : |S| = n})`` drawn by ``np.random.default_rng(seed).choice``. The usual
    reference in every coreset paper (e.g. Guo et al., "DeepCore", DEXA 2022).
    """
    check_budget(features, n)
    rng = np.random.default_rng(seed)
    indices = rng.choice(features.n_train, size=n, replace=False)
    return make_selection(features, indices, "random", {"seed": seed})


def stratified_random(
    strata: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, object]]:
    """Proportional stratified random sampling.

    Stratum ``s`` (``c_s`` rows) receives ``n_s ∈ {⌊n·c_s/N⌋, ⌈n·c_s/N⌉}`` rows by largest remainder
    (strata in sorted order of their labels), drawn uniformly without replacement inside it.

    Parameters
    ----------
    strata : (N,) array
        Stratum label of each row (any sortable dtype).
    n : int
        Budget, ``1 <= n <= N``.
    rng : numpy Generator

    Returns
    -------
    indices : (n,) int64
        Rows grouped by stratum.
    trace : dict
        ``n_strata`` and ``counts_min``/``counts_max`` (per-stratum picks).
    """
    labels, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    counts = largest_remainder(sizes, n)
    order = np.argsort(inverse, kind="stable")  # rows grouped by stratum, row order inside
    starts = np.concatenate([[0], np.cumsum(sizes)])
    picks = [
        np.sort(rng.choice(order[starts[s] : starts[s + 1]], size=int(k), replace=False))
        for s, k in enumerate(counts)
        if k
    ]
    trace = {
        "n_strata": len(labels),
        "counts_min": int(counts.min()),
        "counts_max": int(counts.max()),
    }
    return np.concatenate(picks).astype(np.int64), trace


@register_selector("stratified_user")
def select_stratified_user(
    features: FeatureTable, n: int, *, seed: int, key: str = "user"
) -> Selection:
    """Stratified random sample with one stratum per user (``train_groups[key]``).

    Each user keeps its share of the pool: ``n_u ∈ {⌊n·c_u/N⌋, ⌈n·c_u/N⌉}`` (see
    :func:`stratified_random`). Needs ``train_groups["user"]``.
    """
    check_budget(features, n)
    strata = require_group(features, key, method="stratified_user")
    indices, trace = stratified_random(strata, n, np.random.default_rng(seed))
    return make_selection(features, indices, "stratified_user", {"seed": seed, "key": key, **trace})


def popularity_bins(items: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin each row by the popularity of its item.

    Popularity ``pop(i)`` = number of pool rows whose item is ``i``. Bin edges are the
    ``k/n_bins`` quantiles (k = 1..n_bins−1) of the per-row popularity, deduplicated, so each bin
    holds about ``N/n_bins`` rows (fewer bins when popularities tie); bin 0 is the long tail.

    Returns
    -------
    bins : (N,) int64
    popularity : (N,) int64
    """
    _, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
    popularity = counts[inverse].astype(np.int64)
    edges = np.unique(np.quantile(popularity, np.arange(1, n_bins) / n_bins))
    return np.searchsorted(edges, popularity, side="right").astype(np.int64), popularity


@register_selector("stratified_popularity")
def select_stratified_popularity(
    features: FeatureTable, n: int, *, seed: int, key: str = "item", n_bins: int = 5
) -> Selection:
    """Stratified random sample over item-popularity bins (head … long tail).

    Rows are binned by the pool popularity of their item (:func:`popularity_bins`), then sampled
    proportionally per bin (:func:`stratified_random`). Needs ``train_groups["item"]``.
    """
    check_budget(features, n)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")
    items = require_group(features, key, method="stratified_popularity")
    bins, _ = popularity_bins(items, n_bins)
    indices, trace = stratified_random(bins, n, np.random.default_rng(seed))
    info = {"seed": seed, "key": key, "n_bins": n_bins, **trace}
    return make_selection(features, indices, "stratified_popularity", info)
