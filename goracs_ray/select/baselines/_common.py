"""Helpers shared by the baseline selectors: budgets, tie-breaking, strata and coverage sampling.

Conventions used by every baseline
----------------------------------
* Ties are broken by row index: among equal scores the smaller row index ranks first.
* Anything random draws from ``np.random.default_rng(seed)`` only, so a method is a pure function of
  ``(features, n, seed, opts)``.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import numpy as np

from goracs_ray.select.types import FeatureTable, Selection

__all__ = [
    "ScoreSource",
    "check_budget",
    "coverage_sample",
    "equal_width_bins",
    "importance_scores",
    "largest_remainder",
    "make_selection",
    "parse_enum",
    "require_group",
    "top_n",
]

E = TypeVar("E", bound=enum.Enum)


class ScoreSource(str, enum.Enum):
    """Which per-sample feature measures difficulty/importance."""

    GRAD_NORM = "grad_norm"
    """``FeatureTable.grad_norms`` (GraNd score)."""
    LOSS = "loss"
    """``FeatureTable.train_losses`` (EL2N-style score)."""


def parse_enum(enum_cls: type[E], value: Any, *, name: str) -> E:
    """``enum_cls(value)``, or ValueError naming option ``name`` and the allowed values."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}") from None


def check_budget(features: FeatureTable, n: int) -> None:
    """Raise TypeError/ValueError unless ``n`` is an integer in [1, N]."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"`budget` must be an integer, got {n!r}")
    if not 0 < n <= features.n_train:
        raise ValueError(
            f"`budget` must be in [1, N={features.n_train}] (the training pool size), got {n}"
        )


def top_n(scores: np.ndarray, n: int, *, largest: bool = True) -> np.ndarray:
    """Row indices of the ``n`` largest (or smallest) scores, best first, ties by row index.

    Parameters
    ----------
    scores : (N,) float
    n : int
        How many to return, ``0 <= n <= N``.
    largest : bool
        Rank descending (True) or ascending (False).

    Returns
    -------
    (n,) int64
    """
    key = -np.asarray(scores, dtype=np.float64) if largest else np.asarray(scores, np.float64)
    return np.argsort(key, kind="stable")[:n].astype(np.int64)


def importance_scores(features: FeatureTable, source: ScoreSource, *, method: str) -> np.ndarray:
    """(N,) float64 difficulty scores from ``source`` (grad norms or losses), checked present."""
    if source is ScoreSource.GRAD_NORM:
        features.require("grad_norms", method=method)
        return features.grad_norms.astype(np.float64)
    features.require("train_losses", method=method)
    return features.train_losses.astype(np.float64)


def require_group(features: FeatureTable, key: str, *, method: str) -> np.ndarray:
    """``features.train_groups[key]`` as an (N,) array; ValueError naming the key if missing."""
    groups = features.train_groups or {}
    if key not in groups:
        have = ", ".join(f"`{k}`" for k in sorted(groups)) or "none"
        raise ValueError(
            f"method `{method}` needs `train_groups[{key!r}]` (have: {have}); pass per-sample "
            f"{key} ids in FeatureTable.train_groups or choose another `key`"
        )
    return np.asarray(groups[key])


def largest_remainder(sizes: np.ndarray, n: int) -> np.ndarray:
    """Split budget ``n`` over strata proportionally to ``sizes`` (Hamilton's method).

    Stratum ``s`` gets ``floor(n·c_s/N)`` or that plus one, where ``N = Σ c_s``; the leftover
    units go to the largest fractional parts, ties to the lower stratum position. Since
    ``n <= N``, no stratum is given more than its size.

    Parameters
    ----------
    sizes : (S,) int
        Stratum sizes ``c_s`` (positive).
    n : int
        Budget, ``0 <= n <= Σ sizes``.

    Returns
    -------
    (S,) int64
        Counts summing to exactly ``n``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    exact = sizes * n  # integer numerators of n·c_s/N
    counts = exact // total
    remainder = exact - counts * total
    left = n - int(counts.sum())
    order = np.argsort(-remainder, kind="stable")
    counts[order[:left]] += 1
    return counts


def equal_width_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """(N,) int64 bin of each score over ``n_bins`` equal-width ranges of [min, max] (max in last).

    All scores fall in bin 0 when they are all equal.
    """
    lo, hi = float(scores.min()), float(scores.max())
    if hi <= lo:
        return np.zeros(scores.shape[0], dtype=np.int64)
    bins = np.floor((scores - lo) / (hi - lo) * n_bins).astype(np.int64)
    return np.minimum(bins, n_bins - 1)


def coverage_sample(
    bins: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Coverage-centric stratified sampling over score bins (CCS Algorithm 1; DEALRec §3.3).

    Repeat until no bin is left: take the non-empty bin ``B`` with the fewest samples (ties by bin
    id), draw ``m_B = min(|B|, floor(m / #bins left))`` of its samples uniformly at random, and set
    ``m ← m − m_B``. Small bins are taken whole and their unused share flows to larger bins, so
    every bin is covered and the budget is met exactly whenever ``n <= len(bins)``.

    Parameters
    ----------
    bins : (N',) int
        Bin id of each candidate.
    n : int
        Budget, ``1 <= n <= N'``.
    rng : numpy Generator

    Returns
    -------
    picks : (n,) int64
        Positions into ``bins``, grouped by bin in processing order.
    trace : dict
        ``bin_ids``, ``bin_sizes`` and ``bin_counts`` (selected per bin), in processing order.
    """
    ids, sizes = np.unique(bins, return_counts=True)
    order = np.lexsort((ids, sizes))  # smallest bin first, ties by bin id
    remaining = n
    picks: list[np.ndarray] = []
    trace: dict[str, list[int]] = {"bin_ids": [], "bin_sizes": [], "bin_counts": []}
    for rank, pos in enumerate(order):
        members = np.flatnonzero(bins == ids[pos])
        take = min(int(sizes[pos]), remaining // (len(order) - rank))
        picks.append(np.sort(rng.choice(members, size=take, replace=False)))
        remaining -= take
        trace["bin_ids"].append(int(ids[pos]))
        trace["bin_sizes"].append(int(sizes[pos]))
        trace["bin_counts"].append(take)
    if remaining:
        raise AssertionError(f"coverage sampling left {remaining} of the budget unspent")
    return np.concatenate(picks).astype(np.int64), trace


def make_selection(
    features: FeatureTable, indices: np.ndarray, method: str, info: dict[str, Any]
) -> Selection:
    """Wrap row ``indices`` (selection order) as a :class:`Selection` with the caller's ids."""
    indices = np.asarray(indices, dtype=np.int64)
    return Selection(
        indices=indices, ids=features.train_ids[indices], method=method, classes=None, info=info
    )
