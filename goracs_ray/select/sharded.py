"""Row shards of the POO cost: the per-shard halves of ITRA's greedy and pruning steps (no Ray).

A :class:`CostShard` holds the cost rows ``[start, start + b)`` of one cost matrix as float32,
built with the same pure pieces as :func:`goracs_ray.select.cost.cost_matrix` (so its rows are
bit-identical to the serial matrix). The central driver reduces what the shards return:

* greedy: each shard keeps a lazy heap of stale gains over its own rows and answers the exact
  arg-min of ``(fresh gain, row)`` among them (:meth:`CostShard.greedy_best`); the global greedy
  choice is the min over shards — O(M) per shard per step.
* refinement: each shard scores its rows with :func:`goracs_ray.select.refine.pruning_scores`
  and returns only its ``cut_num`` best non-members and its members (:meth:`CostShard.candidates`)
  — O(cut_num·M) per shard per dual refresh. For the corrected estimator rows are first screened
  with the lower bound ``F(k) >= min_j (c_kj - f_j) / n`` (F is increasing in the R smallest
  reduced costs and ``(R - 1)/M < 1/n``), so most rows never need the O(M) partition. A coarser
  bound from per-row minima over G column groups, ``min_g (min_{j∈g} c_kj - max_{j∈g} f_j) / n``
  (O(G) per row), screens first, so most rows are not even read.

Shard state is a cache: every method takes what it needs to rebuild it (scales, column minima,
members), so a restarted shard answers exactly as before.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from goracs_ray.select.cost import CostScales, distance_block, normalize_block
from goracs_ray.select.greedy import greedy_gains
from goracs_ray.select.refine import DualColumns, Estimator, pruning_scores

__all__ = [
    "CostShard",
    "ShardCandidates",
    "column_groups",
    "merge_column_argmin",
    "shard_bounds",
]

_BLOCK_ROWS = 1024
_POP_BATCH = 8
_SCREEN_ROWS = 256  # rows scored exactly first, to set the screening threshold
_COLUMN_GROUPS = 64


def column_groups(
    valid_emb: np.ndarray, n_groups: int = _COLUMN_GROUPS
) -> tuple[np.ndarray, np.ndarray]:
    """Group validation columns by their nearest of ``n_groups`` evenly spaced seed columns.

    Returns
    -------
    order : (M,) int64
        Columns sorted by group (stable).
    starts : (G,) int64
        Start of each non-empty group in ``order`` (for ``np.minimum.reduceat``).
    """
    m_cols = valid_emb.shape[0]
    seeds = np.unique(np.linspace(0, m_cols - 1, min(n_groups, m_cols)).astype(np.int64))
    group = distance_block(valid_emb, valid_emb[seeds]).argmin(axis=1)
    order = np.argsort(group, kind="stable")
    return order, np.unique(np.searchsorted(group[order], np.arange(len(seeds))))


def shard_bounds(n_rows: int, n_shards: int, *, align: int = _BLOCK_ROWS) -> list[tuple[int, int]]:
    """Split ``range(n_rows)`` into at most ``n_shards`` contiguous, non-empty (start, stop) pairs.

    Boundaries are multiples of ``align`` when the shards are large enough (the cost is built in
    blocks of that many rows, as the serial :func:`cost_matrix` does).
    """
    n_shards = max(1, min(n_shards, n_rows))
    size = -(-n_rows // n_shards)
    if size >= align:
        size = -(-size // align) * align
    cuts = list(range(0, n_rows, size)) + [n_rows]
    return list(zip(cuts[:-1], cuts[1:]))


def merge_column_argmin(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce per-shard column minima ``(value (M,) float32, row (M,) int64)``, in shard order.

    Ties go to the earlier shard (smaller row), as in the serial column arg-min.
    """
    best, owner = parts[0][0].copy(), parts[0][1].copy()
    for val, row in parts[1:]:
        better = val < best
        best[better] = val[better]
        owner[better] = row[better]
    return best, owner


@dataclasses.dataclass(frozen=True, eq=False)
class ShardCandidates:
    """What a shard returns per dual refresh.

    Attributes
    ----------
    outer : (k,) int64
        Its ``cut_num`` (or fewer) non-members with the smallest F, ascending row.
    outer_scores : (k,) float64
        Their F.
    outer_rows : (k, M) float32
        Their cost rows (the joining rows of candidate swaps).
    members : (s,) int64
        The members of S that live in this shard, ascending row.
    member_scores : (s,) float64
        Their F.
    n_scored : int
        Rows whose exact F was computed (the rest were screened out by the lower bound).
    """

    outer: np.ndarray
    outer_scores: np.ndarray
    outer_rows: np.ndarray
    members: np.ndarray
    member_scores: np.ndarray
    n_scored: int


class CostShard:
    """Float32 POO cost rows ``[start, start + b)`` and the per-shard greedy/pruning steps.

    Parameters
    ----------
    train_emb : (b, d) float32
        The shard's training rows.
    valid_emb : (M, d) float32
    grad_norms : (b,) float32 or None
    start : int
        Global row index of the first row.

    Memory: b·M·4 bytes for the cached cost plus ~_BLOCK_ROWS·M·24 bytes of temporaries.
    """

    def __init__(
        self,
        train_emb: np.ndarray,
        valid_emb: np.ndarray,
        grad_norms: np.ndarray | None,
        *,
        start: int,
    ) -> None:
        n_rows = train_emb.shape[0]
        self.start = int(start)
        self.stop = self.start + n_rows
        self.grads = None if grad_norms is None else np.asarray(grad_norms, dtype=np.float32)
        self.cost = np.empty((n_rows, valid_emb.shape[0]), dtype=np.float32)
        self.row_min = np.empty(n_rows, dtype=np.float32)
        self.row_max = np.empty(n_rows, dtype=np.float32)
        for a in range(0, n_rows, _BLOCK_ROWS):
            block = distance_block(train_emb[a : a + _BLOCK_ROWS], valid_emb)
            self.cost[a : a + _BLOCK_ROWS] = block
            self.row_min[a : a + _BLOCK_ROWS] = block.min(axis=1)
            self.row_max[a : a + _BLOCK_ROWS] = block.max(axis=1)
        self.col_order, self.group_starts = column_groups(valid_emb)
        self.group_min: np.ndarray | None = None  # (b, G) float32 after normalize
        self.scales: CostScales | None = None
        self._heap: list[tuple[float, int]] | None = None
        self._held: tuple[float, int] | None = None
        self.n_gain_evals = 0

    # -- cost -------------------------------------------------------------------------------
    def extrema(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row min and max raw distance, (b,) float32 each (for :func:`cost_scales`)."""
        return self.row_min, self.row_max

    def normalize(self, scales: CostScales) -> None:
        """Turn the cached distances into POO costs (idempotent for the same ``scales``)."""
        if self.scales == scales:
            return
        if self.scales is not None:
            raise ValueError("`scales` differ from the ones this shard was normalised with")
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            grads = None if self.grads is None else self.grads[a : a + _BLOCK_ROWS]
            normalize_block(self.cost[a : a + _BLOCK_ROWS], grads, scales)
        self.group_min = np.empty((self.cost.shape[0], len(self.group_starts)), dtype=np.float32)
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            block = self.cost[a : a + _BLOCK_ROWS][:, self.col_order]
            self.group_min[a : a + _BLOCK_ROWS] = np.minimum.reduceat(
                block, self.group_starts, axis=1
            )
        self.scales = scales

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Cost rows of the global row ``ids`` that live here, (k, M) float32."""
        return self.cost[np.asarray(ids, dtype=np.int64) - self.start]

    def owns(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the global row ``ids`` that live in this shard."""
        ids = np.asarray(ids, dtype=np.int64)
        return (ids >= self.start) & (ids < self.stop)

    def row_sums(self) -> np.ndarray:
        """(b,) float64 row sums, as :func:`goracs_ray.select.greedy.row_sums`."""
        out = np.empty(self.cost.shape[0], dtype=np.float64)
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            out[a : a + _BLOCK_ROWS] = self.cost[a : a + _BLOCK_ROWS].sum(axis=1, dtype=np.float64)
        return out

    def column_argmin(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column: min cost over the shard's rows and its global row (first on ties)."""
        arg = self.cost.argmin(axis=0)
        return self.cost[arg, np.arange(self.cost.shape[1])], arg.astype(np.int64) + self.start

    # -- greedy -----------------------------------------------------------------------------
    def _build_heap(self, col_min: np.ndarray, chosen: set[int]) -> None:
        heap: list[tuple[float, int]] = []
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            gains = greedy_gains(self.cost[a : a + _BLOCK_ROWS], col_min)
            base = self.start + a
            heap.extend(
                (g, base + k) for k, g in enumerate(gains.tolist()) if base + k not in chosen
            )
        heapq.heapify(heap)
        self.n_gain_evals += self.cost.shape[0]
        self._heap, self._held = heap, None

    def greedy_best(
        self, col_min: np.ndarray, chosen: np.ndarray
    ) -> tuple[float, int, np.ndarray] | None:
        """Exact arg-min of ``(gain, row)`` over this shard's non-members, lazily.

        Parameters
        ----------
        col_min : (M,) float32
            Column minima over the current S.
        chosen : (s,) int64
            Current S (global rows). The row returned by the previous call is put back in the
            heap unless it was chosen.

        Returns
        -------
        (gain, row, cost row (M,) float32), or None when every row is a member.
        """
        members = set(np.asarray(chosen).tolist())
        if self._heap is None:
            self._build_heap(col_min, members)
        heap = self._heap
        if self._held is not None and self._held[1] not in members:
            heapq.heappush(heap, self._held)
        self._held = None
        if not heap:
            return None
        while True:
            popped = [heapq.heappop(heap) for _ in range(min(_POP_BATCH, len(heap)))]
            ids = np.array([i for _, i in popped])
            fresh = greedy_gains(self.cost[ids - self.start], col_min)
            self.n_gain_evals += len(ids)
            best = min(zip(fresh.tolist(), ids.tolist()))
            for item in zip(fresh.tolist(), ids.tolist()):
                if item != best:
                    heapq.heappush(heap, item)
            if not heap or best <= heap[0]:
                break
            heapq.heappush(heap, best)
        self._held = best
        return best[0], best[1], self.cost[best[1] - self.start].copy()

    # -- refinement -------------------------------------------------------------------------
    def _scores(self, ids: np.ndarray, duals: DualColumns, n: int, estimator: Estimator):
        out = np.empty(len(ids), dtype=np.float64)
        for a in range(0, len(ids), 512):
            part = ids[a : a + 512]
            out[a : a + 512] = pruning_scores(
                self.cost[part - self.start], part, duals, n=n, estimator=estimator
            )
        return out

    def _group_bounds(self, ids: np.ndarray, duals: DualColumns, n: int) -> np.ndarray:
        """``min_g (min_{j∈g} c_kj - max_{j∈g} f_j) / n`` for rows ``ids``, (k,) float64."""
        f_max = np.maximum.reduceat(duals.f[self.col_order], self.group_starts)
        low = (self.group_min[ids - self.start] - f_max).min(axis=1)
        return (low - 1e-6 * (1.0 + float(np.abs(duals.f).max()))) / n

    def _row_bounds(self, ids: np.ndarray, duals: DualColumns, n: int) -> np.ndarray:
        """``min_j (c_kj - f_j) / n`` minus a float32 rounding margin, (k,) float64."""
        f32 = duals.f.astype(np.float32)
        low = np.empty(len(ids), dtype=np.float64)
        for a in range(0, len(ids), _BLOCK_ROWS):
            low[a : a + _BLOCK_ROWS] = (self.cost[ids[a : a + _BLOCK_ROWS] - self.start] - f32).min(
                axis=1
            )
        return (low - 1e-6 * (1.0 + float(np.abs(duals.f).max()))) / n

    def candidates(
        self,
        duals: DualColumns,
        members: np.ndarray,
        *,
        cut_num: int,
        estimator: Estimator = Estimator.CORRECTED,
    ) -> ShardCandidates:
        """This shard's ``cut_num`` best non-members by F and the F of its members.

        Parameters
        ----------
        duals : DualColumns
            Of the current OT solution (:func:`goracs_ray.select.refine.dual_columns`).
        members : (n,) int64
            Current S (global rows).
        cut_num : int
        estimator : Estimator
        """
        n = len(members)
        ids = np.arange(self.start, self.stop)
        member_mask = self.owns(members)
        own_members = np.sort(np.asarray(members)[member_mask])
        outside = np.setdiff1d(ids, own_members)
        if Estimator(estimator) is Estimator.CORRECTED and len(outside) > cut_num:
            bound = self._group_bounds(outside, duals, n)
            n_first = max(_SCREEN_ROWS, 4 * cut_num)
            first = outside[np.sort(np.argsort(bound, kind="stable")[:n_first])]
            first_scores = self._scores(first, duals, n, estimator)
            threshold = np.partition(first_scores, cut_num - 1)[cut_num - 1]
            rest = np.setdiff1d(outside[bound <= threshold], first)
            rest = rest[self._row_bounds(rest, duals, n) <= threshold]
            scored = np.concatenate([first, rest])
            scores = np.concatenate([first_scores, self._scores(rest, duals, n, estimator)])
        else:
            scored = outside
            scores = self._scores(outside, duals, n, estimator)
        keep = np.lexsort((scored, scores))[:cut_num]
        keep = keep[np.argsort(scored[keep])]
        outer = scored[keep]
        return ShardCandidates(
            outer=outer,
            outer_scores=scores[keep],
            outer_rows=self.cost[outer - self.start].copy(),
            members=own_members,
            member_scores=self._scores(own_members, duals, n, estimator),
            n_scored=len(scored) + len(own_members),
        )
