"""CCS: coverage-centric coreset selection (hard cut-off + stratified sampling over score bins)."""

from __future__ import annotations

import logging

import numpy as np

from goracs_ray.select.baselines._common import (
    ScoreSource,
    check_budget,
    coverage_sample,
    equal_width_bins,
    importance_scores,
    make_selection,
    parse_enum,
    top_n,
)
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["select_ccs"]

logger = logging.getLogger(__name__)


def _check_opts(beta: float, n_bins: int) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(
            f"`beta` (fraction of hardest samples to drop) must be in [0, 1), got {beta}"
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")


@register_selector("ccs")
def select_ccs(
    features: FeatureTable,
    n: int,
    *,
    seed: int,
    beta: float = 0.1,
    n_bins: int = 50,
    score: str = "grad_norm",
) -> Selection:
    """CCS: drop the hardest ``β`` fraction, then stratified sampling over importance-score bins.

    1. Importance ``s_i`` = ``grad_norms`` (``score="grad_norm"``) or ``train_losses``
       (``score="loss"``); higher = harder.
    2. Hard cut-off: remove the ``⌊βN⌋`` highest-scoring rows (ties by row index). If fewer than
       ``n`` rows would remain, only ``N − n`` are removed and a WARNING is logged.
    3. Split the kept scores into ``k = n_bins`` equal-width ranges.
    4. Budget spread (CCS Algorithm 1): repeatedly take the non-empty bin ``B`` with the fewest
       rows, sample ``m_B = min(|B|, ⌊m / #bins left⌋)`` uniformly from it, ``m ← m − m_B``.

    Ties by row index; randomness from ``seed`` only. ``info`` records the cut-off and the
    per-bin counts.

    Reference: Zheng, Liu, Li, Prakash, "Coverage-centric Coreset Selection for High Pruning Rates",
    ICLR 2023 (Algorithm 1).
    """
    check_budget(features, n)
    _check_opts(beta, n_bins)
    source = parse_enum(ScoreSource, score, name="score")
    scores = importance_scores(features, source, method="ccs")
    n_total = features.n_train
    n_drop = int(np.floor(beta * n_total))
    if n_total - n_drop < n:
        logger.warning(
            "ccs: dropping %d hardest rows (beta=%.3g) would leave fewer than the budget %d; "
            "dropping only %d",
            n_drop,
            beta,
            n,
            n_total - n,
        )
        n_drop = n_total - n
    kept = np.sort(top_n(scores, n_total)[n_drop:])
    bins = equal_width_bins(scores[kept], n_bins)
    picks, trace = coverage_sample(bins, n, np.random.default_rng(seed))
    info = {
        "seed": seed,
        "beta": beta,
        "n_bins": n_bins,
        "score": source.value,
        "n_dropped": n_drop,
        "score_cutoff": float(scores[kept].max()),
        **trace,
    }
    return make_selection(features, kept[picks], "ccs", info)
