"""ITRA stage 1: greedy facility-location initialisation (METHOD.md §3 and its addendum).

Relaxing the coreset marginal gives Φ(S) = (1/M) Σ_j min_{i∈S} c_ij. The gain of adding row e is
``Σ_j min(c_ej - m_j, 0)`` with ``m_j = min_{i∈S} c_ij``; it only grows (towards 0) as S grows
(submodularity), so a priority queue of stale gains (lower bounds) finds the same arg-min as the
dense loop of the reference, which recomputes all N×M gains at every step.

Semantics (the reference's, made deterministic):

1. S starts with the row of smallest row sum (first index on ties).
2. Add the non-member with the most negative gain; ties go to the smaller row index.
3. Stop at |S| = n, unless ``trim_inactive`` and the full matrix has more than n distinct
   column-wise arg-min rows: then keep adding until n members are *active* (arg-min of at least
   one column within S, ties to the earlier member) and drop the inactive ones.
4. Once every remaining gain is exactly 0 (possible only when n exceeds the number of distinct
   arg-min rows), the reference fills S by floating-point noise; we fill it with the smallest row
   sums (then smallest index), and do not trim.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "ColumnSupport",
    "GreedyResult",
    "column_argmin_count",
    "finish_greedy",
    "greedy_dense",
    "greedy_gains",
    "greedy_init",
    "needs_more",
    "reference_gains",
    "reference_margin",
    "row_sums",
]

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class GreedyResult:
    """Outcome of stage 1.

    Attributes
    ----------
    indices : (n,) int64
        Selected rows, in the order they were added (after any trim).
    order : (n_added,) int64
        Every row added with a negative gain (plus the first), in order, before trim and fill.
    n_added : int
        Rows added before the trim (> n when inactive members were dropped).
    n_zero_gain : int
        Rows added with gain exactly 0, by the row-sum tie-break.
    n_gain_evals : int
        Row gains evaluated (N·steps for the dense loop, far fewer for the lazy one).
    trimmed : bool
        Whether the active-support trim was applied.
    """

    indices: np.ndarray
    order: np.ndarray
    n_added: int
    n_zero_gain: int
    n_gain_evals: int
    trimmed: bool


def greedy_gains(cost_block: np.ndarray, col_min: np.ndarray) -> np.ndarray:
    """Gains ``Σ_j min(c_ej - m_j, 0)`` of adding each row of a block.

    Parameters
    ----------
    cost_block : (b, M) float32
    col_min : (M,) float32
        Column minima ``m`` over the current S.

    Returns
    -------
    (b,) float64
        Non-positive gains (more negative = better). Memory: b·M·4 bytes temporary.
    """
    diff = np.subtract(cost_block, col_min)
    np.minimum(diff, 0.0, out=diff)
    return diff.sum(axis=1, dtype=np.float64)


def reference_gains(cost_block: np.ndarray, col_min: np.ndarray) -> np.ndarray:
    """The reference's float32 gain ``Σ_j c_ej - Σ_j |m_j - c_ej|``, shifted by ``-Σ_j m_j``.

    The reference picks ``argmin`` of ``C.sum(1) - |m - C|.sum(1)`` computed in float32; that
    equals ``Σ m + 2 Σ min(c - m, 0)`` in exact arithmetic, so subtracting ``Σ m`` (the same for
    every row, in float64, which keeps the float32 values' order) leaves a key that grows as S
    grows, up to rounding (:func:`reference_margin`), as the lazy heap needs.

    Parameters
    ----------
    cost_block : (b, M) float32
    col_min : (M,) float32

    Returns
    -------
    (b,) float64
        The float32 reference gains minus ``Σ m``. Memory: b·M·4 bytes temporary.
    """
    block = np.asarray(cost_block, dtype=np.float32)
    col_min = np.asarray(col_min, dtype=np.float32)
    gains = block.sum(axis=1, dtype=np.float32) - np.abs(col_min - block).sum(
        axis=1, dtype=np.float32
    )
    return gains.astype(np.float64) - float(col_min.sum(dtype=np.float64))


def reference_margin(m_cols: int) -> float:
    """Twice a bound on the rounding error of :func:`reference_gains` for M columns.

    Two float32 pairwise sums of M terms in [0, 1] and one subtraction:
    ``|error| <= 2^-24 · (⌈log2 M⌉ + 24) · 2M``; a stale key is a lower bound of the fresh
    one up to twice that.
    """
    return 2.0 * 2.0**-24 * (math.ceil(math.log2(max(m_cols, 2))) + 24) * 2.0 * m_cols


def row_sums(cost: np.ndarray) -> np.ndarray:
    """Row sums of ``cost`` ((N, M) float32) as (N,) float64, block by block."""
    out = np.empty(cost.shape[0], dtype=np.float64)
    for start in range(0, cost.shape[0], _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = cost[start : start + _BLOCK_ROWS].sum(
            axis=1, dtype=np.float64
        )
    return out


def column_argmin_count(cost: np.ndarray) -> int:
    """Number of distinct rows that are the arg-min of some column of ``cost`` (first on ties).

    Parameters
    ----------
    cost : (N, M) float32
        Read block by block; memory O(M).
    """
    best = np.full(cost.shape[1], np.inf, dtype=np.float32)
    owner = np.zeros(cost.shape[1], dtype=np.int64)
    for start in range(0, cost.shape[0], _BLOCK_ROWS):
        block = cost[start : start + _BLOCK_ROWS]
        arg = block.argmin(axis=0)
        val = block[arg, np.arange(block.shape[1])]
        better = val < best
        best[better] = val[better]
        owner[better] = arg[better] + start
    return len(np.unique(owner))


class ColumnSupport:
    """Column minima over S and, per column, the member attaining it (earliest on ties).

    Parameters
    ----------
    first_row : (M,) float32
        Costs of the first member of S.
    """

    def __init__(self, first_row: np.ndarray) -> None:
        self.col_min = np.array(first_row, copy=True)
        self.owner = np.zeros(first_row.shape[0], dtype=np.int64)  # position in S
        self.counts = [first_row.shape[0]]  # columns owned, per position in S

    def add(self, row: np.ndarray) -> None:
        better = row < self.col_min
        self.col_min[better] = row[better]
        for pos, cnt in zip(*np.unique(self.owner[better], return_counts=True)):
            self.counts[pos] -= int(cnt)
        self.owner[better] = len(self.counts)
        self.counts.append(int(better.sum()))

    @property
    def n_active(self) -> int:
        return sum(1 for c in self.counts if c > 0)


def finish_greedy(
    n_rows: int, chosen: list[int], support: ColumnSupport, n: int, trim: bool, sums: np.ndarray
) -> tuple[np.ndarray, int]:
    """Fill by row sums when gains are exhausted, or trim inactive members; returns (S, #fill).

    ``sums`` : (n_rows,) float64 row sums of the whole cost matrix.
    """
    n_fill = 0
    if trim and support.n_active >= n:
        return np.array([i for i, c in zip(chosen, support.counts) if c > 0], dtype=np.int64), 0
    if len(chosen) < n:
        rest = np.setdiff1d(np.arange(n_rows), chosen)
        fill = rest[np.argsort(sums[rest], kind="stable")[: n - len(chosen)]]
        n_fill = len(fill)
        chosen = chosen + fill.tolist()
    if trim:
        logger.warning(
            "greedy: every remaining gain is 0 before %d members were active; "
            "filled by smallest row sums and skipped the active-support trim",
            n,
        )
    return np.array(chosen[:n], dtype=np.int64), n_fill


def needs_more(support: ColumnSupport, size: int, n: int, trim: bool) -> bool:
    """Whether the greedy must add another row (|S| < n, or too few active members to trim)."""
    return size < n or (trim and support.n_active < n)


def greedy_init(
    cost,
    n: int,
    *,
    trim_inactive: bool = False,
    reference_arithmetic: bool = False,
    progress: bool = False,
) -> GreedyResult:
    """Lazy greedy with the reference's exact semantics (see the module docstring).

    Parameters
    ----------
    cost : (N, M) float32 array or :class:`goracs_ray.select.rowstore.RowStore`
        POO cost (an array is read in place). Memory: O(N + M) beyond the rows themselves.
    n : int
        Budget, 1 ≤ n ≤ N.
    trim_inactive : bool
        Apply the reference's active-support trim (METHOD.md §3.3).
    reference_arithmetic : bool
        Choose rows by the reference's float32 gain (:func:`reference_gains`; faithful mode),
        which orders near-ties as the reference does. The stop test (gain exactly 0, then the
        row-sum fill) still uses the float64 gain, so the fill stays defined.
    progress : bool
        Show a tqdm bar over greedy steps.

    Returns
    -------
    GreedyResult
    """
    from goracs_ray.select.rowstore import as_store

    store = as_store(cost)
    sums = store.row_sums()
    first = int(np.argmin(sums))
    trim = trim_inactive and len(np.unique(store.column_owners())) > n
    support = ColumnSupport(store.rows([first])[0])
    margin = reference_margin(len(support.col_min)) if reference_arithmetic else 0.0
    chosen = [first]
    bar = tqdm(total=n, desc="greedy", disable=None if progress else True, initial=1)
    while needs_more(support, len(chosen), n, trim):
        best = store.greedy_best(support.col_min, chosen, margin)
        if best is None:
            break
        gain, row, row_cost = best
        if reference_arithmetic:
            gain = float(greedy_gains(row_cost[None], support.col_min)[0])
        if gain >= 0.0:
            break
        chosen.append(row)
        support.add(row_cost)
        bar.update(1)
    bar.close()
    return _result(store.n_rows, chosen, support, n, trim, sums, store.n_gain_evals())


def _result(n_rows, chosen, support, n, trim, sums, n_evals) -> GreedyResult:
    """Finish (trim or zero-gain fill) a greedy run and package it."""
    n_added = len(chosen)
    indices, n_fill = finish_greedy(n_rows, chosen, support, n, trim, sums)
    return GreedyResult(
        indices=indices,
        order=np.array(chosen, dtype=np.int64),
        n_added=n_added,
        n_zero_gain=n_fill,
        n_gain_evals=n_evals,
        trimmed=trim and n_fill == 0 and n_added > n,
    )


def greedy_dense(cost: np.ndarray, n: int, *, trim_inactive: bool = False) -> GreedyResult:
    """Reference-style dense greedy: all N gains recomputed at every step (O(n·N·M)).

    Same semantics and tie-breaks as :func:`greedy_init`; kept as the slow oracle for tests and
    the benchmark baseline. Memory: block temporaries only.
    """
    sums = row_sums(cost)
    first = int(np.argmin(sums))
    trim = trim_inactive and column_argmin_count(cost) > n
    support = ColumnSupport(cost[first])
    chosen = [first]
    member = np.zeros(cost.shape[0], dtype=bool)
    member[first] = True
    n_evals = 0
    while needs_more(support, len(chosen), n, trim) and not member.all():
        gains = np.empty(cost.shape[0], dtype=np.float64)
        for start in range(0, cost.shape[0], _BLOCK_ROWS):
            gains[start : start + _BLOCK_ROWS] = greedy_gains(
                cost[start : start + _BLOCK_ROWS], support.col_min
            )
        n_evals += cost.shape[0]
        gains[member] = np.inf
        e = int(np.argmin(gains))
        if gains[e] >= 0.0:
            break
        chosen.append(e)
        member[e] = True
        support.add(cost[e])
    return _result(cost.shape[0], chosen, support, n, trim, sums, n_evals)
