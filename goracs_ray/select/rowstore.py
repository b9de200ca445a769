"""Row stores: the one interface ITRA's drivers read the POO cost through (no Ray here).

:func:`goracs_ray.select.greedy.greedy_init` and :func:`goracs_ray.select.refine.refine` are
written once against :class:`RowStore`; the backends differ only in where cost rows live:

* :func:`memory_store` — one in-memory float32 (N, M) matrix (the serial path);
* :func:`recomputed_store` — rows recomputed from the embeddings on demand, in blocks sized by a
  memory budget; no N×M array is ever stored;
* the Ray row-shard actors (:mod:`goracs_ray.select.distributed` passes a ``call`` that fans a
  method out to its actors).

Every backend is a :class:`PartsStore` over contiguous row shards
(:class:`goracs_ray.select.sharded.RowShard`): the reductions over shards (greedy arg-min,
candidate merge) are written here once, so serial and distributed selection agree by
construction, and the exact screening bounds serve every backend.

Refinement evaluates candidate swaps through a :class:`SwapEvaluator`: :class:`SerialEvaluator`
here, a pool of Ray actors in the distributed module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from goracs_ray.select.cost import CostScales, cost_scales
from goracs_ray.select.ot import OTSolution
from goracs_ray.select.refine import DualColumns, Estimator, candidate_pairs, evaluate_swap
from goracs_ray.select.sharded import (
    CostShard,
    RecomputedShard,
    RowShard,
    merge_column_argmin,
    shard_bounds,
)

__all__ = [
    "Candidates",
    "PartsStore",
    "RowStore",
    "SerialEvaluator",
    "SwapEvaluator",
    "as_store",
    "memory_store",
    "recomputed_store",
]

ShardCall = Callable[..., list[Any]]
"""``call(method, *args, **kwargs) -> [answer of shard 0, answer of shard 1, ...]``."""


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
    """Candidate swaps of one dual refresh, in canonical try order.

    Attributes
    ----------
    pairs : (P, 2) int64
        (leaving, joining) rows (:func:`goracs_ray.select.refine.candidate_pairs`).
    rows : dict[int, (M,) float32]
        Cost rows of the joining candidates.
    n_scored : int
        Rows whose exact F was computed (the rest were screened out).
    """

    pairs: np.ndarray
    rows: dict[int, np.ndarray]
    n_scored: int


class RowStore(Protocol):
    """What ITRA's drivers need from the POO cost (N rows, M columns)."""

    n_rows: int

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Cost rows of ``ids``, (k, M) float32 in the order given."""

    def row_sums(self) -> np.ndarray:
        """(N,) float64 row sums."""

    def column_owners(self) -> np.ndarray:
        """(M,) int64 row attaining each column's min (first on ties)."""

    def greedy_best(
        self, col_min: np.ndarray, chosen: Sequence[int], margin: float = 0.0
    ) -> tuple[float, int, np.ndarray] | None:
        """Exact arg-min of (gain, row) over non-members, with the row's costs (lazy)."""

    def n_gain_evals(self) -> int:
        """Row gains evaluated so far."""

    def candidates(
        self, duals: DualColumns, members: np.ndarray, *, cut_num: int, estimator: Estimator
    ) -> Candidates:
        """Pruned candidate pairs from the duals of the current S."""


class PartsStore:
    """A :class:`RowStore` over contiguous row shards, reached through ``call``.

    Parameters
    ----------
    call : ShardCall
        Runs a :class:`~goracs_ray.select.sharded.RowShard` method on every shard, in order.
    n_rows : int
        N, the rows of all shards together.
    """

    def __init__(self, call: ShardCall, n_rows: int) -> None:
        self.call = call
        self.n_rows = int(n_rows)

    @classmethod
    def local(cls, shards: Sequence[RowShard]) -> PartsStore:
        """In-process shards (method calls in shard order)."""

        def call(method: str, *args: Any, **kwargs: Any) -> list[Any]:
            return [getattr(s, method)(*args, **kwargs) for s in shards]

        return cls(call, sum(s.stop - s.start for s in shards))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = None
        for mask, rows in self.call("owned_rows", ids):
            if out is None:
                out = np.empty((len(ids), rows.shape[1]), dtype=np.float32)
            out[mask] = rows
        return out

    def row_sums(self) -> np.ndarray:
        return np.concatenate(self.call("row_sums"))

    def column_owners(self) -> np.ndarray:
        return merge_column_argmin(self.call("column_argmin"))[1]

    def greedy_best(self, col_min, chosen, margin: float = 0.0):
        answers = self.call("greedy_best", col_min, np.asarray(chosen, dtype=np.int64), margin)
        answers = [a for a in answers if a is not None]
        return min(answers, key=lambda a: (a[0], a[1])) if answers else None

    def n_gain_evals(self) -> int:
        return int(sum(self.call("gain_evals")))

    def candidates(self, duals, members, *, cut_num, estimator) -> Candidates:
        answers = self.call("candidates", duals, members, cut_num=cut_num, estimator=estimator)
        outer = np.concatenate([a.outer for a in answers])
        ids = np.concatenate([np.concatenate([a.members for a in answers]), outer])
        scores = np.concatenate(
            [np.concatenate([a.member_scores for a in answers])] + [a.outer_scores for a in answers]
        )
        order = np.argsort(ids)
        ids, scores = ids[order], scores[order]
        pairs = candidate_pairs(
            scores, np.searchsorted(ids, members), cut_num=cut_num, estimator=estimator
        )
        rows = dict(zip(outer.tolist(), np.concatenate([a.outer_rows for a in answers])))
        return Candidates(ids[pairs], rows, sum(a.n_scored for a in answers))


def memory_store(cost: np.ndarray, *, device: str = "cpu") -> PartsStore:
    """The serial backend: one in-memory (N, M) float32 cost matrix (not copied).

    ``device``: where the screening bounds are computed (:mod:`goracs_ray.select.kernels`).
    """
    return PartsStore.local([CostShard.from_cost(cost, device=device)])


def as_store(cost: np.ndarray | RowStore) -> RowStore:
    """``cost`` itself when it is a row store, else :func:`memory_store` of the array."""
    return memory_store(cost) if isinstance(cost, np.ndarray) else cost


def recomputed_store(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    *,
    memory_bytes: int = 256 * 2**20,
    n_shards: int = 1,
    device: str = "cpu",
    **cost_options: Any,
) -> tuple[PartsStore, CostScales]:
    """The backend that never stores the cost: rows recomputed from the embeddings.

    ``cost_options``: ``lam``, ``divide_distance``, ``grad_max`` as
    :func:`goracs_ray.select.cost.cost_scales`. Same rows (bit for bit) and so the same coreset
    as ``memory_store(cost_matrix(...).values)``. ``device``: where rows and screening bounds
    are computed (:mod:`goracs_ray.select.kernels`; a torch device gives rows within 1e-6).
    Memory: N·(d + 68)·4 bytes plus, per shard, ``memory_bytes`` for a block's temporaries and
    twice as many for the cache of the rows the refinement screens (:class:`RecomputedShard`).
    """
    shards = [
        RecomputedShard(
            train_emb[a:b], valid_emb, None if grad_norms is None else grad_norms[a:b],
            start=a, memory_bytes=memory_bytes, device=device,
        )
        for a, b in shard_bounds(len(train_emb), n_shards)
    ]  # fmt: skip
    scales = cost_scales(
        np.concatenate([s.row_min for s in shards]),
        np.concatenate([s.row_max for s in shards]),
        grad_norms,
        **cost_options,
    )
    for shard in shards:
        shard.normalize(scales)
    return PartsStore.local(shards), scales


class SwapEvaluator(Protocol):
    """Exact OT of candidate swaps against the current members."""

    n_workers: int

    def evaluate(
        self,
        pairs: np.ndarray,
        cost_members: np.ndarray,
        solution: OTSolution,
        position: dict[int, int],
        rows: dict[int, np.ndarray],
        *,
        warm_start: bool,
        append: bool,
    ) -> list[OTSolution]:
        """One solution per pair of ``pairs`` ((P, 2) int64), in order."""


class SerialEvaluator:
    """Solves each swap in this process, one after the other."""

    n_workers = 1

    def evaluate(self, pairs, cost_members, solution, position, rows, *, warm_start, append):
        return [
            evaluate_swap(
                cost_members, solution, position[leave], rows[join],
                warm_start=warm_start, append=append,
            )
            for leave, join in np.asarray(pairs).tolist()
        ]  # fmt: skip
