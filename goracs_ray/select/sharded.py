"""Row shards of the POO cost: the per-shard halves of ITRA's greedy and pruning steps (no Ray).

A :class:`RowShard` answers for the cost rows ``[start, start + b)`` of one cost matrix; the
subclasses differ only in where a row comes from:

* :class:`CostShard` stores the rows as float32 (built with the same pure pieces as
  :func:`goracs_ray.select.cost.cost_matrix`, so they are bit-identical to the serial matrix, or
  wrapping a matrix already built);
* :class:`RecomputedShard` stores no N×M array: it recomputes rows from the embeddings on demand,
  in blocks sized by a memory budget (the same rows, bit for bit).

The driver (:class:`goracs_ray.select.rowstore.PartsStore`) reduces what the shards return:

* greedy: each shard keeps a lazy heap of stale gains over its own rows and answers the exact
  arg-min of ``(fresh gain, row)`` among them (:meth:`RowShard.greedy_best`); the global greedy
  choice is the min over shards — O(M) per shard per step.
* refinement: each shard scores its rows with :func:`goracs_ray.select.refine.pruning_scores`
  and returns only its ``cut_num`` best non-members and its members (:meth:`RowShard.candidates`)
  — O(cut_num·M) per shard per dual refresh. For the corrected estimator rows are first screened
  with the lower bound ``F(k) >= min_j (c_kj - f_j) / n`` (F is increasing in the R smallest
  reduced costs and ``(R - 1)/M < 1/n``), so most rows never need the O(M) partition. A coarser
  bound from per-row minima over G column groups, ``min_g (min_{j∈g} c_kj - max_{j∈g} f_j) / n``
  (O(G) per row), screens first, so most rows are not even read; for a row that passes it, the
  row bound reads only the columns of the groups within the threshold
  (:meth:`RowShard._may_pass_row_bound`), and only rows passing both are read in full.

``device`` says where a shard computes cost rows and screening bounds
(:mod:`goracs_ray.select.kernels`); pruning scores, greedy gains and the OT stay in numpy.

Shard state is a cache: every method takes what it needs to rebuild it (scales, column minima,
members), so a restarted shard answers exactly as before.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator

import numpy as np

from goracs_ray.select import kernels
from goracs_ray.select.cost import CostScales, distance_block
from goracs_ray.select.greedy import greedy_gains, reference_gains
from goracs_ray.select.refine import DualColumns, Estimator, pruning_scores

__all__ = [
    "CostShard",
    "RecomputedShard",
    "RowShard",
    "ShardCandidates",
    "column_groups",
    "merge_column_argmin",
    "shard_bounds",
]

_BLOCK_ROWS = 1024
_POP_BATCH = 8
_SCREEN_ROWS = 256  # rows scored exactly first, to set the screening threshold
_COLUMN_GROUPS = 64
_GROUP_SAMPLE_ROWS = 256  # rows whose costs describe a column when no embeddings are given
_BOUND_ROWS = 8192  # rows per chunk of the group bound (keeps its temporary in cache)


def column_groups(
    column_features: np.ndarray, n_groups: int = _COLUMN_GROUPS
) -> tuple[np.ndarray, np.ndarray]:
    """Group columns by their nearest of ``n_groups`` evenly spaced seed columns.

    Parameters
    ----------
    column_features : (M, k) float32
        One vector per column (the validation embeddings, or a few rows of the cost,
        transposed). Any grouping keeps the screening bound valid; similar columns make it tight.

    Returns
    -------
    order : (M,) int64
        Columns sorted by group (stable).
    starts : (G,) int64
        Start of each non-empty group in ``order`` (for ``np.minimum.reduceat``).
    """
    m_cols = column_features.shape[0]
    seeds = np.unique(np.linspace(0, m_cols - 1, min(n_groups, m_cols)).astype(np.int64))
    group = distance_block(column_features, column_features[seeds]).argmin(axis=1)
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


class RowShard:
    """The POO cost rows ``[start, stop)`` and the per-shard greedy and pruning steps.

    Subclasses provide :meth:`block` (rows by local index) and :meth:`blocks` (every row, in
    order, block by block); everything else is written once here.
    """

    start: int
    stop: int
    scales: CostScales | None
    row_min: np.ndarray
    row_max: np.ndarray
    device: str

    def _init_state(
        self, start: int, stop: int, column_features: np.ndarray, device: str = "cpu"
    ) -> None:
        self.start, self.stop, self.device = int(start), int(stop), kernels.check_device(device)
        self.col_order, self.group_starts = column_groups(column_features)
        self.group_min: np.ndarray | None = None  # (b, G) float32 once the costs are known
        self._heap: list[tuple[float, int]] | None = None
        self._held: tuple[float, int] | None = None
        self.n_gain_evals = 0
        self.n_refreshes = 0  # calls of `candidates` (the candidate-row cache's clock)

    # -- rows (subclasses) -------------------------------------------------------------------
    def block(self, local: np.ndarray) -> np.ndarray:
        """Cost rows of the local indices ``local``, (k, M) float32."""
        raise NotImplementedError

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(local start, (b, M) float32 rows)`` over all rows, in order."""
        raise NotImplementedError

    def _candidate_rows(self, local: np.ndarray) -> np.ndarray:
        """Rows read by the refinement's screening and scoring, (k, M) float32.

        The same rows as :meth:`block`; :class:`RecomputedShard` serves them from a cache
        (rows near the pruning threshold repeat from one dual refresh to the next).
        """
        return self.block(local)

    def _column_block(self, local: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Costs of rows ``local`` at columns ``cols``, (k, c) float32: the same numbers as
        ``block(local)[:, cols]`` up to the summation order of the distance product."""
        raise NotImplementedError

    def drop_row_cache(self) -> None:
        """Free the cached candidate rows, if any (answers are unchanged)."""

    def row_cache_stats(self) -> dict[str, int]:
        """Candidate-row cache: ``capacity`` (rows), ``held``, and ``hits`` and ``misses`` since
        it was last dropped."""
        return {"capacity": 0, "held": 0, "hits": 0, "misses": 0}

    def _group_minima(self) -> None:
        self.group_min = np.empty((self.stop - self.start, len(self.group_starts)), np.float32)
        for a, block in self.blocks():
            self.group_min[a : a + len(block)] = kernels.group_minima(
                block, self.col_order, self.group_starts, device=self.device
            )

    # -- cost -------------------------------------------------------------------------------
    def _raw_distances(self, train, valid, block_rows: int, out: np.ndarray | None) -> None:
        """Per-row distance extrema (and, when ``out`` is given, the distances themselves)."""
        n_rows = train.shape[0]
        self.row_min = np.empty(n_rows, dtype=np.float32)
        self.row_max = np.empty(n_rows, dtype=np.float32)
        for a in range(0, n_rows, block_rows):
            block = kernels.distance_block(train[a : a + block_rows], valid, device=self.device)
            if out is not None:
                out[a : a + len(block)] = block
            self.row_min[a : a + len(block)] = block.min(axis=1)
            self.row_max[a : a + len(block)] = block.max(axis=1)
        self.scales = None

    def extrema(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row min and max raw distance, (b,) float32 each (for :func:`cost_scales`)."""
        return self.row_min, self.row_max

    def _apply_scales(self, scales: CostScales) -> None:
        raise NotImplementedError

    def normalize(self, scales: CostScales) -> None:
        """Fix the cost scales (idempotent for the same ``scales``): stored distances become
        POO costs in place; the per-row group minima are computed."""
        if self.scales == scales:
            return
        if self.scales is not None:
            raise ValueError("`scales` differ from the ones this shard was normalised with")
        self._apply_scales(scales)
        self.scales = scales
        self._group_minima()

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Cost rows of the global row ``ids`` that live here, (k, M) float32."""
        return self.block(np.asarray(ids, dtype=np.int64) - self.start)

    def owns(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the global row ``ids`` that live in this shard."""
        ids = np.asarray(ids, dtype=np.int64)
        return (ids >= self.start) & (ids < self.stop)

    def owned_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mask of ids living here, their cost rows (k, M) float32)``."""
        ids = np.asarray(ids, dtype=np.int64)
        mask = self.owns(ids)
        return mask, self.rows(ids[mask])

    def gain_evals(self) -> int:
        """Row gains evaluated by :meth:`greedy_best` so far."""
        return self.n_gain_evals

    def row_sums(self) -> np.ndarray:
        """(b,) float64 row sums, as :func:`goracs_ray.select.greedy.row_sums`."""
        out = np.empty(self.stop - self.start, dtype=np.float64)
        for a, block in self.blocks():
            out[a : a + len(block)] = block.sum(axis=1, dtype=np.float64)
        return out

    def column_argmin(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column: min cost over the shard's rows and its global row (first on ties)."""
        parts = []
        for a, block in self.blocks():
            arg = block.argmin(axis=0)
            parts.append((block[arg, np.arange(block.shape[1])], arg.astype(np.int64) + a))
        best, owner = merge_column_argmin(parts)
        return best, owner + self.start

    # -- greedy -----------------------------------------------------------------------------
    def _gains(self, block: np.ndarray, col_min: np.ndarray, reference: bool) -> np.ndarray:
        return reference_gains(block, col_min) if reference else greedy_gains(block, col_min)

    def _build_heap(self, col_min: np.ndarray, chosen: set[int], reference: bool) -> None:
        heap: list[tuple[float, int]] = []
        for a, block in self.blocks():
            gains = self._gains(block, col_min, reference)
            base = self.start + a
            heap.extend(
                (g, base + k) for k, g in enumerate(gains.tolist()) if base + k not in chosen
            )
        heapq.heapify(heap)
        self.n_gain_evals += self.stop - self.start
        self._heap, self._held = heap, None

    def greedy_best(
        self, col_min: np.ndarray, chosen: np.ndarray, margin: float = 0.0
    ) -> tuple[float, int, np.ndarray] | None:
        """Exact arg-min of ``(gain, row)`` over this shard's non-members, lazily.

        Parameters
        ----------
        col_min : (M,) float32
            Column minima over the current S.
        chosen : (s,) int64
            Current S (global rows). The row returned by the previous call is put back in the
            heap unless it was chosen.
        margin : float
            0: float64 gains ``Σ_j min(c_kj - m_j, 0)``, whose stale values are exact lower
            bounds. > 0: the reference's float32 gains (:func:`reference_gains`), whose stale
            values are lower bounds up to ``margin`` (twice their rounding error), so every row
            whose stale gain is within ``margin`` of the best fresh one is re-evaluated too.

        Returns
        -------
        (gain, row, cost row (M,) float32), or None when every row is a member.
        """
        members = set(np.asarray(chosen).tolist())
        reference = margin > 0
        if self._heap is None:
            self._build_heap(col_min, members, reference)
        heap = self._heap
        if self._held is not None and self._held[1] not in members:
            heapq.heappush(heap, self._held)
        self._held = None
        if not heap:
            return None
        fresh_seen: list[tuple[float, int]] = []
        best = None
        while True:
            popped = [heapq.heappop(heap) for _ in range(min(_POP_BATCH, len(heap)))]
            ids = np.array([i for _, i in popped])
            fresh = self._gains(self.rows(ids), col_min, reference)
            self.n_gain_evals += len(ids)
            batch = list(zip(fresh.tolist(), ids.tolist()))
            fresh_seen.extend(batch)
            best = min(batch) if best is None else min(best, min(batch))
            if not heap or (best[0] + margin, best[1]) <= heap[0]:
                break
        for item in fresh_seen:
            if item != best:
                heapq.heappush(heap, item)
        self._held = best
        return best[0], best[1], self.rows([best[1]])[0].copy()

    # -- refinement -------------------------------------------------------------------------
    def _scores(
        self, ids: np.ndarray, duals: DualColumns, n: int, estimator: Estimator, cached: bool = True
    ) -> np.ndarray:
        """F of rows ``ids``, (k,) float64; ``cached=False`` for one-off passes over every row."""
        read = self._candidate_rows if cached else self.block
        out = np.empty(len(ids), dtype=np.float64)
        for a in range(0, len(ids), 512):
            part = ids[a : a + 512]
            out[a : a + 512] = pruning_scores(
                read(part - self.start), part, duals, n=n, estimator=estimator
            )
        return out

    @staticmethod
    def _margin(duals: DualColumns) -> float:
        """Float32 rounding margin of the screening bounds (c and f are below 1 + max|f|)."""
        return 1e-6 * (1.0 + float(np.abs(duals.f).max()))

    def _group_max_f(self, duals: DualColumns) -> np.ndarray:
        """``max_{j∈g} f_j`` per column group, (G,) float32 (rounding is monotone, so it is
        >= every ``f_j`` of the group in float32 too)."""
        return np.maximum.reduceat(duals.f[self.col_order], self.group_starts).astype(np.float32)

    def _group_bounds(self, duals: DualColumns, n: int) -> np.ndarray:
        """``min_g (min_{j∈g} c_kj - max_{j∈g} f_j) / n`` for every row of the shard, (b,) float64.

        In float32 minus the rounding margin, in small chunks (about 10× faster at 500k rows
        than one pass that copies the group minima).
        """
        if self.group_min is None:
            self._group_minima()
        f_max = self._group_max_f(duals)
        low = np.empty(len(self.group_min), dtype=np.float32)
        for a in range(0, len(low), _BOUND_ROWS):
            low[a : a + _BOUND_ROWS] = kernels.reduced_min(
                self.group_min[a : a + _BOUND_ROWS], f_max, device=self.device
            )
        return (low.astype(np.float64) - self._margin(duals)) / n

    def _may_pass_row_bound(
        self, ids: np.ndarray, duals: DualColumns, n: int, threshold: float
    ) -> np.ndarray:
        """Mask of the rows ``ids`` whose row bound ``min_j (c_kj - f_j) / n`` may be <= threshold.

        Only the columns of a row's *active* groups are read: those whose group term
        ``(min_{j∈g} c_kj - max_{j∈g} f_j) / n`` is within the threshold. Every column of an
        inactive group has ``c_kj - f_j`` above it (in float32 too: rounding is monotone), so
        the minimum over the active columns decides the test, and a row is not recomputed in
        full just to be screened out (at 1M × 5k: ≈ 39,000 → 2,200 rows read in full per
        refresh, docs/scaling.md). The threshold is relaxed by the rounding margin, so that
        costs recomputed for a column subset (another summation order of the distance product)
        never drop a row that the full row would keep; a row kept in excess is only scored
        exactly.
        """
        local = np.asarray(ids, dtype=np.int64) - self.start
        margin = self._margin(duals)
        limit = threshold + margin / n
        f32 = duals.f.astype(np.float32)
        f_max = self._group_max_f(duals)
        low = np.full(len(local), np.inf, dtype=np.float32)
        ends = np.append(self.group_starts[1:], len(self.col_order))
        for a in range(0, len(local), _BOUND_ROWS):
            part = local[a : a + _BOUND_ROWS]
            group_low = self.group_min[part] - f_max  # (k, G) float32, as in _group_bounds
            active = (group_low.astype(np.float64) - margin) / n <= limit
            for g in np.flatnonzero(active.any(axis=0)):
                rows = np.flatnonzero(active[:, g])
                cols = self.col_order[self.group_starts[g] : ends[g]]
                step = max(1, _BLOCK_ROWS * len(self.col_order) // len(cols))
                for r in range(0, len(rows), step):
                    sub = rows[r : r + step]
                    block = self._column_block(part[sub], cols)
                    got = kernels.reduced_min(block, f32[cols], device=self.device)
                    low[a + sub] = np.minimum(low[a + sub], got)
        return (low.astype(np.float64) - margin) / n <= limit

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
        self.n_refreshes += 1
        n = len(members)
        own_members = np.sort(np.asarray(members)[self.owns(members)])
        is_outside = np.ones(self.stop - self.start, dtype=bool)  # masks, not set operations:
        is_outside[own_members - self.start] = False  # O(b) rather than sorts of b rows
        outside = np.flatnonzero(is_outside) + self.start
        if Estimator(estimator) is Estimator.CORRECTED and len(outside) > cut_num:
            bound = self._group_bounds(duals, n)
            n_first = min(max(_SCREEN_ROWS, 4 * cut_num), len(outside))
            lowest = np.argpartition(bound[outside - self.start], n_first - 1)[:n_first]
            first = outside[np.sort(lowest)]
            first_scores = self._scores(first, duals, n, estimator)
            threshold = np.partition(first_scores, cut_num - 1)[cut_num - 1]
            passing = is_outside & (bound <= threshold)
            passing[first - self.start] = False
            rest = np.flatnonzero(passing) + self.start
            rest = rest[self._may_pass_row_bound(rest, duals, n, threshold)]
            scored = np.concatenate([first, rest])
            scores = np.concatenate([first_scores, self._scores(rest, duals, n, estimator)])
        else:
            scored = outside
            scores = self._scores(outside, duals, n, estimator, cached=False)
        keep = np.lexsort((scored, scores))[:cut_num]
        keep = keep[np.argsort(scored[keep])]
        outer = scored[keep]
        return ShardCandidates(
            outer=outer,
            outer_scores=scores[keep],
            outer_rows=self._candidate_rows(outer - self.start),
            members=own_members,
            member_scores=self._scores(own_members, duals, n, estimator),
            n_scored=len(scored) + len(own_members),
        )


class CostShard(RowShard):
    """Float32 POO cost rows ``[start, start + b)``, stored.

    Parameters
    ----------
    train_emb : (b, d) float32
        The shard's training rows.
    valid_emb : (M, d) float32
    grad_norms : (b,) float32 or None
    start : int
        Global row index of the first row.
    device : str
        Where cost rows and screening bounds are computed (:mod:`goracs_ray.select.kernels`).

    Memory: b·M·4 bytes for the cached cost plus ~_BLOCK_ROWS·M·24 bytes of temporaries.
    """

    def __init__(
        self,
        train_emb: np.ndarray,
        valid_emb: np.ndarray,
        grad_norms: np.ndarray | None,
        *,
        start: int,
        device: str = "cpu",
    ) -> None:
        n_rows = train_emb.shape[0]
        self._init_state(start, start + n_rows, valid_emb, device)
        self.grads = None if grad_norms is None else np.asarray(grad_norms, dtype=np.float32)
        self.cost = np.empty((n_rows, valid_emb.shape[0]), dtype=np.float32)
        self._raw_distances(train_emb, valid_emb, _BLOCK_ROWS, self.cost)

    @classmethod
    def from_cost(cls, cost: np.ndarray, *, start: int = 0, device: str = "cpu") -> CostShard:
        """Wrap an already normalised (b, M) float32 cost matrix (no copy when it is float32).

        Column groups come from the costs of a few evenly spaced rows.
        """
        shard = cls.__new__(cls)
        shard.cost = np.asarray(cost, dtype=np.float32)
        n_rows = shard.cost.shape[0]
        sample = np.unique(np.linspace(0, n_rows - 1, min(n_rows, _GROUP_SAMPLE_ROWS)).astype(int))
        columns = np.ascontiguousarray(shard.cost[sample].T)
        shard._init_state(start, start + n_rows, columns, device)
        shard.grads = None
        shard.scales = None
        return shard

    def block(self, local: np.ndarray) -> np.ndarray:
        return self.cost[local]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            yield a, self.cost[a : a + _BLOCK_ROWS]

    def _column_block(self, local: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.cost[np.ix_(local, cols)]

    def _apply_scales(self, scales: CostScales) -> None:
        for a in range(0, self.cost.shape[0], _BLOCK_ROWS):
            grads = None if self.grads is None else self.grads[a : a + _BLOCK_ROWS]
            kernels.normalize_block(
                self.cost[a : a + _BLOCK_ROWS], grads, scales, device=self.device
            )


class RecomputedShard(RowShard):
    """POO cost rows ``[start, start + b)`` recomputed from the embeddings on demand.

    No (b, M) array is kept: :meth:`blocks` recomputes ``block_rows`` rows at a time, with
    ``block_rows`` chosen so that one block's temporaries fit ``memory_bytes``; random rows
    (greedy re-evaluations) are recomputed as asked. Rows equal :class:`CostShard`'s bit for bit
    (the same float64 distance and normalisation pieces).

    The rows the refinement reads in full (those it scores exactly: the first screened, those
    passing both bounds, the members, the candidates) are kept in a cache of ``cache_bytes``:
    from one dual refresh to the next they are mostly the same rows (hit rate 0.97 at 1M × 5k,
    ≈ 1,100 rows per shard and refresh; docs/scaling.md). A miss takes the
    slot of the row least recently used by an *earlier* refresh, never one read by the current
    refresh, so a refresh that reads more rows than fit still hits on the rows that stayed
    (plain LRU would evict them all within the refresh and hit on none).

    Parameters
    ----------
    train_emb : (b, d) float32
    valid_emb : (M, d) float32
    grad_norms : (b,) float32 or None
    start : int
    memory_bytes : int
        Budget for one block's temporaries (about 24 bytes per cost entry).
    cache_bytes : int, optional
        Budget for the candidate-row cache (M·4 bytes per row; default twice ``memory_bytes``;
        0 turns it off). Filled only during refinement; :meth:`drop_row_cache` frees it.
    device : str
        Where rows are recomputed (:mod:`goracs_ray.select.kernels`; the budget applies there).

    Memory: b·d·4 (embeddings) + b·(G·4 + 4) (group minima, cache slots) + ``memory_bytes`` +
    ``cache_bytes`` (3 × ``memory_bytes`` by default); time: each pass over the rows costs a
    (b × d) × (d × M) float64 product.
    """

    def __init__(
        self,
        train_emb: np.ndarray,
        valid_emb: np.ndarray,
        grad_norms: np.ndarray | None,
        *,
        start: int,
        memory_bytes: int = 256 * 2**20,
        cache_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.train = np.ascontiguousarray(train_emb, dtype=np.float32)
        self.valid = np.ascontiguousarray(valid_emb, dtype=np.float32)
        n_rows = self.train.shape[0]
        self._init_state(start, start + n_rows, self.valid, device)
        self.grads = None if grad_norms is None else np.asarray(grad_norms, dtype=np.float32)
        self.block_rows = max(1, int(memory_bytes // (24 * max(1, self.valid.shape[0]))))
        self._raw_distances(self.train, self.valid, self.block_rows, None)
        # Rows are recomputed a few at a time (lazy greedy, candidates): keep the validation
        # side in float64 with its squared norms (M·(d + 1)·8 bytes), the same numbers per call.
        self._valid64, self._valid_sq = None, None
        if self.device == "cpu":
            self._valid64 = self.valid.astype(np.float64)
            self._valid_sq = np.einsum("ij,ij->i", self._valid64, self._valid64)
        cache_bytes = 2 * memory_bytes if cache_bytes is None else cache_bytes
        self.cache_capacity = min(n_rows, int(cache_bytes // (4 * max(1, self.valid.shape[0]))))
        self.drop_row_cache()

    def drop_row_cache(self) -> None:
        self._cache: np.ndarray | None = None  # (capacity, M) float32, allocated on first use
        self._slot = np.full(self.stop - self.start, -1, dtype=np.int32)  # row -> cache slot
        self._slot_row = np.full(self.cache_capacity, -1, dtype=np.int64)  # slot -> row
        self._slot_used = np.zeros(self.cache_capacity, dtype=np.int64)  # slot -> last refresh
        self.cache_hits = self.cache_misses = 0

    def cached_rows(self) -> int:
        """Rows held by the candidate-row cache now."""
        return int((self._slot_row >= 0).sum())

    def row_cache_stats(self) -> dict[str, int]:
        return {"capacity": self.cache_capacity, "held": self.cached_rows(),
                "hits": self.cache_hits, "misses": self.cache_misses}  # fmt: skip

    def _candidate_rows(self, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, dtype=np.int64)
        if self.cache_capacity == 0:
            return self.block(local)
        if self._cache is None:
            self._cache = np.empty((self.cache_capacity, self.valid.shape[0]), dtype=np.float32)
        clock = self.n_refreshes
        slots = self._slot[local]
        hit = slots >= 0
        self._slot_used[slots[hit]] = clock
        out = np.empty((len(local), self.valid.shape[0]), dtype=np.float32)
        out[hit] = self._cache[slots[hit]]
        miss = np.flatnonzero(~hit)
        self.cache_hits += len(local) - len(miss)
        self.cache_misses += len(miss)
        if len(miss):
            out[miss] = self.block(local[miss])
            # free slots first, then the least recently used by an earlier refresh
            free = np.flatnonzero(self._slot_used < clock)
            free = free[np.argsort(self._slot_used[free], kind="stable")][: len(miss)]
            gone = self._slot_row[free]
            self._slot[gone[gone >= 0]] = -1
            kept = miss[: len(free)]
            self._cache[free] = out[kept]
            self._slot[local[kept]] = free
            self._slot_row[free] = local[kept]
            self._slot_used[free] = clock
        return out

    def _apply_scales(self, scales: CostScales) -> None:
        pass  # rows are normalised as they are recomputed

    def block(self, local: np.ndarray) -> np.ndarray:
        if self.scales is None:
            raise ValueError("call `normalize(scales)` before reading cost rows")
        local = np.asarray(local)
        out = np.empty((len(local), self.valid.shape[0]), dtype=np.float32)
        for a in range(0, len(local), self.block_rows):
            part = local[a : a + self.block_rows]
            grads = None if self.grads is None else self.grads[part]
            out[a : a + len(part)] = kernels.cost_block(
                self.train[part],
                self.valid if self._valid64 is None else self._valid64,
                grads,
                self.scales,
                device=self.device,
                valid_sq=self._valid_sq,
            )
        return out

    def _column_block(self, local: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.scales is None:
            raise ValueError("call `normalize(scales)` before reading cost rows")
        valid = self.valid if self._valid64 is None else self._valid64
        return kernels.cost_block(
            self.train[local], valid[cols], None if self.grads is None else self.grads[local],
            self.scales, device=self.device,
            valid_sq=None if self._valid_sq is None else self._valid_sq[cols],
        )  # fmt: skip

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        n_rows = self.stop - self.start
        for a in range(0, n_rows, self.block_rows):
            yield a, self.block(np.arange(a, min(a + self.block_rows, n_rows)))
