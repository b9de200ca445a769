"""Bootstrap confidence intervals and paired comparisons of evaluated arms. numpy only.

The test set is a sample, and so are the seeds: a method's score is the mean over its seeds of a
metric over the same test samples. Both are resampled, in one *two-level bootstrap* replicate:

1. the N test samples are drawn N times with replacement (multinomial counts ``w``, shape (N,)),
   the same draw for every seed of the replicate (the seeds of one arm share the test samples);
2. the S seeds are drawn S times with replacement (counts ``c``, shape (S,));
3. the replicate is ``Σ_s c_s · T_s(w) / S`` where ``T_s(w)`` is the metric of seed s on the
   weighted samples: ``Σ_i w_i v_si / N`` for a per-sample mean (NDCG@K, HR@K, losses, accuracy),
   or AUC recomputed on the weighted samples.

The 95 % interval is the 2.5 / 97.5 % percentile of 2,000 replicates (Efron & Tibshirani 1993,
ch. 13). A paired comparison (method − baseline) does the same on ``T_s^m(w) − T_s^b(w)``, with
samples paired by ``sample_id`` and seeds by seed value (only the seeds both have), so the noise
shared by both arms (hard test samples, a lucky seed) cancels. With one seed only the samples are
resampled: the interval is then "over test samples only" (:attr:`Interval.samples_only`).

Everything is deterministic given ``seed``: the sample and the seed draws come from two
independent streams ``default_rng([seed, 0])`` and ``default_rng([seed, 1])``, and samples are
ordered by ``sample_id`` before resampling, so every arm of one benchmark sees the same resamples.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def lower_is_better(name: str) -> bool:
    """True for losses (``test_loss``, ``log_loss``) and mean ranks (``*mean_rank``)."""
    return "loss" in name or name.endswith("mean_rank")


def metric_order(name: str) -> tuple[str, int]:
    """Sort key of metric names: by name, then by cut-off (``ndcg@5`` before ``ndcg@10``)."""
    base, _, k = name.partition("@")
    return (base, int(k) if k.isdigit() else 0)


__all__ = [
    "N_BOOT",
    "Interval",
    "SampleValues",
    "bootstrap_ci",
    "describe",
    "paired_bootstrap",
    "read_values",
    "sample_values",
    "verdict",
]

N_BOOT = 2000
"""Default number of bootstrap replicates."""

_RANKED = re.compile(r"^(grounded_)?(ndcg|hr)@(\d+)$")
_EPS = 1e-7  # probability clip of goracs_ray.evaluate.metrics.log_loss


@dataclasses.dataclass(frozen=True)
class SampleValues:
    """Per-test-sample inputs of one metric for one evaluated arm (one seed)."""

    metric: str
    """Metric name, e.g. ``"ndcg@10"`` or ``"auc"``."""
    sample_id: np.ndarray
    """(N,) object (str): the test samples, unique."""
    values: np.ndarray
    """(N,) float64 per-sample values whose mean is the metric, or for ``auc`` (N, 2) float64
    columns ``[label, p_yes]`` (AUC is recomputed on each resample, not averaged)."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A metric (or a difference of metrics) with its bootstrap confidence interval."""

    metric: str
    """Metric name."""
    mean: float
    """Point estimate: mean over seeds of the metric on all test samples (of the Δ if paired)."""
    low: float
    """Lower CI bound (NaN when no per-sample values were available)."""
    high: float
    """Upper CI bound (NaN likewise)."""
    n_samples: int
    """Test samples resampled (0 without per-sample values)."""
    n_seeds: int
    """Seeds averaged (and resampled when ≥ 2)."""
    level: float = 0.95
    """Confidence level."""

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def samples_only(self) -> bool:
        """One seed: the interval covers the test-sample noise only, not the seed noise."""
        return self.n_seeds < 2

    def format(self, digits: int = 4, *, signed: bool = False) -> str:
        """``0.1234 [0.1100, 0.1360]`` (``+0.0123 [-0.0040, +0.0200]`` if ``signed``)."""
        spec = f"{'+' if signed else ''}.{digits}f"
        if not self.has_ci:
            return f"{self.mean:{spec}} [–]"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def size(self) -> str:
        """``n=500 × 3 seeds`` or ``n=500, over test samples only``."""
        if not self.has_ci:
            return f"{self.n_seeds} seed(s), no per-sample predictions"
        if self.samples_only:
            return f"n={self.n_samples}, 1 seed: over test samples only"
        return f"n={self.n_samples} × {self.n_seeds} seeds"


def _column(predictions: Any, name: str) -> np.ndarray | None:
    names = getattr(predictions, "column_names", None)  # pyarrow.Table
    if names is not None:
        return predictions.column(name).to_numpy(zero_copy_only=False) if name in names else None
    return np.asarray(predictions[name]) if name in predictions else None  # DataFrame / dict


def sample_values(predictions: Any, metric: str) -> SampleValues | None:
    """Per-sample values of ``metric`` from one arm's ``predictions.parquet`` table.

    Parameters
    ----------
    predictions : pyarrow.Table, pandas.DataFrame or mapping of column → (N,) array
        ``sample_id`` (str) and, for SeqRec, ``rank`` (int64, 0-based among 1 + negatives),
        optionally ``target_loss`` (float64) and ``grounded_rank`` (int64); for CTR ``p_yes``
        (float64) and ``label`` (int64 0/1).
    metric : str
        ``ndcg@K`` (``1/log2(rank+2)`` if ``rank < K`` else 0), ``hr@K`` (``rank < K``),
        ``mean_rank`` (``rank``), their ``grounded_`` variants (from ``grounded_rank``),
        ``test_loss`` (``target_loss``), ``log_loss`` (``−log p`` or ``−log(1−p)``, p clipped to
        [1e-7, 1 − 1e-7]), ``accuracy`` (``(p > 0.5) == label``) or ``auc``.

    Returns
    -------
    SampleValues or None
        None when the metric is not a per-sample one (e.g. ``valid_loss``) or a column it needs is
        absent, so the caller shows the metric without a CI.
    """
    ids = _column(predictions, "sample_id")
    if ids is None:
        return None
    values = None
    ranked = _RANKED.match(metric)
    if ranked or metric in ("mean_rank", "grounded_mean_rank"):
        col = "grounded_rank" if metric.startswith("grounded_") else "rank"
        rank = _column(predictions, col)
        if rank is not None:
            rank = rank.astype(np.float64)
            if not ranked:
                values = rank
            elif ranked.group(2) == "hr":
                values = (rank < int(ranked.group(3))).astype(np.float64)
            else:
                k = int(ranked.group(3))
                values = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    elif metric == "test_loss":
        loss = _column(predictions, "target_loss")
        values = None if loss is None else loss.astype(np.float64)
    elif metric in ("auc", "log_loss", "accuracy"):
        p, y = _column(predictions, "p_yes"), _column(predictions, "label")
        if p is not None and y is not None:
            p, y = p.astype(np.float64), y.astype(np.float64)
            if metric == "auc":
                values = np.stack([y, p], axis=1)
            elif metric == "log_loss":
                q = np.clip(p, _EPS, 1.0 - _EPS)
                values = -(y * np.log(q) + (1.0 - y) * np.log(1.0 - q))
            else:
                values = ((p > 0.5) == (y == 1)).astype(np.float64)
    if values is None:
        return None
    ids = np.asarray(ids, dtype=object)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"predictions for `{metric}` repeat a `sample_id`; each must be unique")
    return SampleValues(metric, ids, values)


def read_values(paths: Mapping[int, str | Path | None], metric: str) -> dict[int, SampleValues]:
    """:func:`sample_values` of each seed's ``predictions.parquet``; ``{}`` when any seed's file
    is unknown, absent, or lacks the columns ``metric`` needs (the caller then shows no CI)."""
    out = {}
    for seed, path in paths.items():
        if path is None or not Path(path).is_file():
            return {}
        values = sample_values(_read_cached(str(path), Path(path).stat().st_mtime_ns), metric)
        if values is None:
            return {}
        out[seed] = values
    return out


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, mtime_ns: int):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _aligned(per_seed: Mapping[int, SampleValues], order: np.ndarray | None) -> np.ndarray:
    """Values of every seed in the order of ``order`` (sorted ids by default): (S, N) or (S, N, 2).
    Raises ValueError when a seed holds other samples."""
    arrays = []
    for seed, sv in per_seed.items():
        if order is None:
            order = np.sort(sv.sample_id)
        index = np.argsort(sv.sample_id)
        ids = sv.sample_id[index]
        if len(ids) != len(order) or not np.array_equal(ids, order):
            missing = np.setdiff1d(order, ids)[:3].tolist()
            extra = np.setdiff1d(ids, order)[:3].tolist()
            raise ValueError(
                f"cannot pair `{sv.metric}` by `sample_id`: seed {seed} has {len(ids)} test "
                f"samples, the reference {len(order)} (missing e.g. {missing}, extra e.g. "
                f"{extra}); evaluate every arm on the same test samples (`eval.max_samples`)"
            )
        arrays.append(sv.values[index])
    return np.stack(arrays)


@functools.lru_cache(maxsize=4)
def _sample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) float64 multinomial(n, 1/n) counts: one resample of the n samples per row."""
    rng = np.random.default_rng([seed, 0])
    picks = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    counts = counts.astype(np.float64)
    counts.setflags(write=False)
    return counts


def _seed_counts(s: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, s) float64 seed counts; all ones when s == 1 (nothing to resample)."""
    if s == 1:
        return np.ones((n_boot, 1))
    rng = np.random.default_rng([seed, 1])
    picks = rng.integers(0, s, size=(n_boot, s)) + (np.arange(n_boot) * s)[:, None]
    return np.bincount(picks.ravel(), minlength=n_boot * s).reshape(n_boot, s).astype(np.float64)


def _weighted_auc(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of one seed under each row of sample weights (Mann–Whitney, ties half credit).

    values : (N, 2) float64 ``[label, score]``; counts : (B, N) float64 → (B,) float64 (NaN when
    a resample holds one class only). Equals ``metrics.auc`` for all-ones counts.
    Memory: a few (B, N) float64 arrays.
    """
    y, s = values[:, 0], values[:, 1]
    order = np.argsort(s, kind="mergesort")
    _, starts = np.unique(s[order], return_index=True)
    w = counts[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)  # (B, G) positive weight per score
    neg = np.add.reduceat(w * (1.0 - y[order]), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    u = (pos * (below + 0.5 * neg)).sum(axis=1)
    denom = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u / np.where(denom > 0, denom, 1.0), np.nan)


def _per_seed_stats(metric: str, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(S, B) metric of each seed under each resample; values (S, N) or (S, N, 2)."""
    if metric == "auc":
        return np.stack([_weighted_auc(v, counts) for v in values])
    return (counts @ values.T).T / values.shape[1]  # (B, N) @ (N, S): the fast BLAS layout


def _interval(metric, point, stats, n_samples, n_boot, level, seed) -> Interval:
    """Point estimate + percentile interval of the seed-resampled mean of ``stats`` (S, B)."""
    s = stats.shape[0]
    reps = (_seed_counts(s, n_boot, seed) * stats.T).sum(axis=1) / s
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
    return Interval(metric, float(point), float(low), float(high), n_samples, s, level)


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"`n_boot` must be ≥ 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level}")


def _identity_point(metric: str, values: np.ndarray) -> np.ndarray:
    """(S,) metric of each seed on all samples."""
    return _per_seed_stats(metric, values, np.ones((1, values.shape[1])))[:, 0]


def bootstrap_ci(
    per_seed: Mapping[int, SampleValues],
    *,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of one method's metric, with a two-level bootstrap interval.

    Parameters
    ----------
    per_seed : mapping seed → SampleValues
        One arm per seed, all with the same ``sample_id`` set (any order) and metric.
    n_boot : int
        Bootstrap replicates (default 2,000).
    level : float
        Confidence level of the percentile interval.
    seed : int
        Seed of the resampling (see the module docstring).

    Returns
    -------
    Interval
        ``mean`` = mean over seeds of the metric on all samples; ``low``/``high`` the percentile
        bounds; ``samples_only`` when there is one seed.

    Memory: (n_boot, N) float64 counts (32 MB for 2,000 × 2,000), cached for the next call.
    """
    _check(n_boot, level)
    if not per_seed:
        raise ValueError("`per_seed` is empty: nothing to bootstrap")
    metric = next(iter(per_seed.values())).metric
    values = _aligned(per_seed, None)
    counts = _sample_counts(values.shape[1], n_boot, seed)
    stats = _per_seed_stats(metric, values, counts)
    point = _identity_point(metric, values).mean()
    return _interval(metric, point, stats, values.shape[1], n_boot, level, seed)


def paired_bootstrap(
    method: Mapping[int, SampleValues],
    baseline: Mapping[int, SampleValues],
    *,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``method − baseline`` with a paired two-level bootstrap interval.

    Seeds are paired by seed value (only the seeds both have), samples by ``sample_id``; each
    replicate applies one sample resample to both arms and every seed, then resamples the paired
    seeds, so ``Δ_b = Σ_s c_s (T_s^method(w) − T_s^baseline(w)) / S``.

    Parameters
    ----------
    method, baseline : mapping seed → SampleValues
        Same metric and, for every common seed, the same ``sample_id`` set.
    n_boot, level, seed
        As in :func:`bootstrap_ci`.

    Returns
    -------
    Interval
        ``mean`` = mean over common seeds of the Δ on all samples.

    Raises
    ------
    ValueError
        No common seed, or paired arms evaluated on different test samples.
    """
    _check(n_boot, level)
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        raise ValueError(
            f"no common seed to pair: method has {sorted(method)}, baseline {sorted(baseline)}"
        )
    metric = method[seeds[0]].metric
    a = _aligned({s: method[s] for s in seeds}, None)
    order = np.sort(method[seeds[0]].sample_id)
    b = _aligned({s: baseline[s] for s in seeds}, order)
    counts = _sample_counts(a.shape[1], n_boot, seed)
    stats = _per_seed_stats(metric, a, counts) - _per_seed_stats(metric, b, counts)
    point = (_identity_point(metric, a) - _identity_point(metric, b)).mean()
    return _interval(metric, point, stats, a.shape[1], n_boot, level, seed)


def verdict(delta: Interval) -> str:
    """``better`` / ``worse`` when the Δ's interval excludes 0 (sign flipped for lower-is-better
    metrics such as losses and ``mean_rank``), else ``no difference``; ``n/a`` without a CI."""
    if not delta.has_ci:
        return "n/a"
    if delta.low <= 0.0 <= delta.high:
        return "no difference"
    up = delta.low > 0.0
    return "better" if up != lower_is_better(delta.metric) else "worse"


def describe(name: str, baseline: str, delta: Interval) -> str:
    """One line: ``goracs − random (ndcg@10): +0.0100 [-0.0050, +0.0250] (n=500 × 3 seeds):
    no difference``."""
    return (
        f"{name} − {baseline} ({delta.metric}): {delta.format(signed=True)} "
        f"({delta.size()}): {verdict(delta)}"
    )
