"""ITRA stage 2: refinement by exchange, pruned with a dual-based estimate (METHOD.md §4).

Per dual refresh (the OT solution of the current S):

1. :func:`dual_columns` — per column j, the min over S of the reduced cost ``c_lj - u_l``, the
   member attaining it and the second min.
2. :func:`pruning_scores` — per row block, the estimate F(k) of Theorem 4.3; ``F(o) - F(i)``
   estimates the change of POO when i leaves and o joins.
3. :func:`candidate_pairs` — the cut_num most promising outsiders × the cut_num most removable
   members, in a canonical try order.
4. :func:`evaluate_swap` — exact OT of one swapped set (warm-started from the current duals).

:func:`refine` runs them serially; a distributed driver can call the same pure pieces on row
shards and evaluate a batch of pairs in parallel: with ``batch_size`` pairs per round and the
best improving pair of the first improving batch accepted (ties to the earlier pair), the
result is the same whatever the number of evaluators.

Estimators: ``corrected`` (default) takes ŷ_k as the R-th *smallest* reduced cost and gives
members the second min of their own columns; ``faithful`` reproduces the reference (R-th
largest, plain min for every row, inner candidates tried worst-first, cold OT per pair).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time

import numpy as np
from tqdm.auto import tqdm

from goracs_ray.select.ot import OTSolution, add_row_potential, solve_ot

__all__ = [
    "DualColumns",
    "Estimator",
    "RefineResult",
    "RefineState",
    "StopReason",
    "candidate_pairs",
    "dual_columns",
    "evaluate_swap",
    "pruning_scores",
    "refine",
    "start_state",
]

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 512


class Estimator(str, enum.Enum):
    """How the marginal improvement of a swap is estimated from the duals."""

    CORRECTED = "corrected"
    """R-th smallest ŷ, exclude-self second min for members; pairs by estimated ΔPOO."""
    FAITHFUL = "faithful"
    """The reference code: R-th largest ŷ, no-op member mask, worst-first inner order."""


class StopReason(str, enum.Enum):
    """Why refinement ended."""

    MAX_ITERS = "max_iters"
    NO_IMPROVEMENT = "no_improvement"
    TIME_LIMIT = "time_limit"


@dataclasses.dataclass(frozen=True, eq=False)
class DualColumns:
    """Column statistics of the reduced costs ``c_lj - u_l`` over the members l of S.

    Attributes
    ----------
    f : (M,) float64
        Column minimum.
    owner : (M,) int64
        Row index (in the N-row space) of the member attaining it (earliest in S on ties).
    second : (M,) float64
        Min over the members other than ``owner`` (equals ``f`` on ties and when |S| = 1).
    """

    f: np.ndarray
    owner: np.ndarray
    second: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class RefineResult:
    """Outcome of stage 2.

    Attributes
    ----------
    indices : (n,) int64
        Final coreset rows (corrected: a swap replaces the leaving row in place; faithful: it
        removes it and appends the joining row, as the reference).
    poo_trace : (k + 1,) float64
        POO of the start set, then after each of the k accepted swaps.
    swap_seconds : (k + 1,) float64
        Seconds since the start of refinement when each trace value was reached.
    swaps : (k, 2) int64
        Accepted (leaving, joining) row pairs.
    n_ot_solves : int
        Exact OT problems solved (including the first one on the start set).
    n_pairs_tried : int
        Candidate pairs evaluated.
    stop_reason : StopReason
    info : dict
        JSON-serialisable timings: evaluators, per-wave and per-refresh records.
    """

    indices: np.ndarray
    poo_trace: np.ndarray
    swap_seconds: np.ndarray
    swaps: np.ndarray
    n_ot_solves: int
    n_pairs_tried: int
    stop_reason: StopReason
    info: dict = dataclasses.field(default_factory=dict)


def dual_columns(cost_rows: np.ndarray, u: np.ndarray, members: np.ndarray) -> DualColumns:
    """Column min, arg-min member and second min of ``cost_rows - u[:, None]``.

    Parameters
    ----------
    cost_rows : (n, M) float32 or float64
        Costs of the members, in the order of ``members``.
    u : (n,) float64
        Their row potentials.
    members : (n,) int64
        Their row indices in the N-row space.

    Memory: n·M·8 bytes temporary.
    """
    reduced = np.asarray(cost_rows, dtype=np.float64) - u[:, None]
    pos = reduced.argmin(axis=0)
    cols = np.arange(reduced.shape[1])
    f = reduced[pos, cols].copy()
    reduced[pos, cols] = np.inf
    second = reduced.min(axis=0)
    second = np.where(np.isfinite(second), second, f)  # |S| = 1: nothing to exclude
    return DualColumns(f=f, owner=np.asarray(members, dtype=np.int64)[pos], second=second)


def pruning_scores(
    cost_block: np.ndarray,
    row_ids: np.ndarray,
    duals: DualColumns,
    *,
    n: int,
    estimator: Estimator = Estimator.CORRECTED,
) -> np.ndarray:
    """Estimate F(k) (METHOD.md §4) for a block of rows.

    ``F(k) = (1/M) Σ_j min(c_kj - ŷ_k - f(k,j), 0) + ŷ_k / n`` with ŷ_k the R-th smallest
    (corrected) or largest (faithful) of ``c_kj - f(k,j)``, R = ⌈M/n⌉.

    Parameters
    ----------
    cost_block : (b, M) float32
    row_ids : (b,) int64
        Row indices of the block in the N-row space, ascending.
    duals : DualColumns
    n : int
        Coreset size |S|.
    estimator : Estimator

    Returns
    -------
    (b,) float64
        Reduced costs are formed in float32 (about 1e-7 relative error). Memory: b·M·4 bytes.
    """
    m_cols = cost_block.shape[1]
    rank = math.ceil(m_cols / n)
    reduced = np.subtract(cost_block, duals.f.astype(np.float32), dtype=np.float32)
    if estimator is Estimator.CORRECTED:
        pos = np.searchsorted(row_ids, duals.owner)
        own = np.flatnonzero(pos < len(row_ids))
        own = own[row_ids[pos[own]] == duals.owner[own]]
        reduced[pos[own], own] += (duals.f[own] - duals.second[own]).astype(np.float32)
        kth = rank - 1
    else:
        kth = m_cols - rank
    y_hat = np.partition(reduced, kth, axis=1)[:, kth]
    reduced -= y_hat[:, None]
    np.minimum(reduced, 0.0, out=reduced)
    return reduced.sum(axis=1, dtype=np.float64) / m_cols + y_hat.astype(np.float64) / n


def candidate_pairs(
    scores: np.ndarray,
    members: np.ndarray,
    *,
    cut_num: int,
    estimator: Estimator = Estimator.CORRECTED,
) -> np.ndarray:
    """Pruned (leaving, joining) pairs in canonical try order.

    Outer pruning keeps the ``cut_num`` non-members with the smallest F, inner pruning the
    ``cut_num`` members with the largest F (ties: smaller index / earlier member first).
    Faithful: ``product(inner ascending F, outer ascending F)`` as the reference. Corrected:
    ascending estimated ΔPOO ``F(o) - F(i)``, ties by (i, o).

    Parameters
    ----------
    scores : (N,) float64
        F for every row.
    members : (n,) int64
        Current coreset rows.

    Returns
    -------
    (P, 2) int64
    """
    outside = np.setdiff1d(np.arange(scores.shape[0]), members)
    outer = outside[np.argsort(scores[outside], kind="stable")[:cut_num]]
    inner = members[np.argsort(scores[members], kind="stable")[-cut_num:]]
    leave = np.repeat(inner, len(outer))
    join = np.tile(outer, len(inner))
    if estimator is Estimator.CORRECTED:
        order = np.lexsort((join, leave, scores[join] - scores[leave]))
        leave, join = leave[order], join[order]
    return np.stack([leave, join], axis=1).astype(np.int64)


def evaluate_swap(
    cost_members: np.ndarray,
    solution: OTSolution,
    position: int,
    new_row: np.ndarray,
    *,
    warm_start: bool = True,
    append: bool = False,
) -> OTSolution:
    """Exact OT after replacing member ``position`` by a row with costs ``new_row``.

    Parameters
    ----------
    cost_members : (n, M) float64
        Costs of the current members (not modified).
    solution : OTSolution
        Current solution, used for the warm start.
    position : int
        Position in S of the leaving member.
    new_row : (M,) float32
        Costs of the joining row.
    warm_start : bool
        Start the network simplex from the current potentials, with the joining row's potential
        set to ``min_j (c_oj - v_j)`` (dual feasible).
    append : bool
        Remove the leaving row and append the joining one (the reference's member order, whose
        duals — not unique — are the ones the reference prunes with) instead of replacing it in
        place. The solution's ``u`` follows the same order.

    Memory: one n·M·8 copy plus the solver's working set.
    """
    if append:
        swapped = np.vstack([np.delete(cost_members, position, axis=0), new_row[None, :]])
    else:
        swapped = cost_members.copy()
        swapped[position] = new_row
    init = None
    if warm_start:
        u_new = add_row_potential(solution.v, new_row)
        if append:
            u = np.append(np.delete(solution.u, position), u_new)
        else:
            u = solution.u.copy()
            u[position] = u_new
        init = (u, solution.v)
    return solve_ot(swapped, potentials_init=init)


def all_scores(
    cost: np.ndarray, members: np.ndarray, duals: DualColumns, *, estimator: Estimator
) -> np.ndarray:
    """F for every row of ``cost`` ((N, M) float32), block by block."""
    out = np.empty(cost.shape[0], dtype=np.float64)
    for start in range(0, cost.shape[0], _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, cost.shape[0])
        out[start:stop] = pruning_scores(
            cost[start:stop], np.arange(start, stop), duals, n=len(members), estimator=estimator
        )
    return out


@dataclasses.dataclass
class RefineState:
    """Where refinement stands after an accepted swap (what a checkpoint stores).

    Attributes
    ----------
    members : (n,) int64
        Current S, in the driver's member order.
    solution : OTSolution
        Exact OT of S (its duals drive the next refresh).
    trace : list[float]
        POO of the start set, then after each accepted swap.
    seconds : list[float]
        Seconds since refinement began when each trace value was reached.
    swaps : list[tuple[int, int]]
        Accepted (leaving, joining) pairs.
    n_tried : int
        Candidate pairs evaluated so far.
    """

    members: np.ndarray
    solution: OTSolution
    trace: list[float]
    seconds: list[float]
    swaps: list[tuple[int, int]]
    n_tried: int = 0


def _try_pairs(pairs, cost_members, state, rows, evaluator, *, batch_size, warm_start, append,
               tol, deadline, waves):  # fmt: skip
    """The commit rule: waves of ``batch_size·⌈W/batch_size⌉`` pairs; after a wave the first
    batch (in canonical order) holding an improving pair gives its best pair (ties to the
    earlier one). Returns (accepted, tried, timed_out); the result does not depend on W."""
    wave = batch_size * math.ceil(evaluator.n_workers / batch_size)
    position = {int(r): p for p, r in enumerate(state.members)}
    tried = 0
    for w0 in range(0, len(pairs), wave):
        chunk = pairs[w0 : w0 + wave]
        t0 = time.perf_counter()
        sols = evaluator.evaluate(
            chunk, cost_members, state.solution, position, rows,
            warm_start=warm_start, append=append,
        )  # fmt: skip
        tried += len(chunk)
        best = None
        for b0 in range(0, len(chunk), batch_size):
            for k in range(b0, min(b0 + batch_size, len(chunk))):
                sol = sols[k]
                if sol.value < state.solution.value - tol and (
                    best is None or sol.value < best[2].value
                ):
                    best = (int(chunk[k, 0]), int(chunk[k, 1]), sol)
            if best is not None:
                break
        waves.append(
            {"pairs": len(chunk), "workers": min(evaluator.n_workers, len(chunk)),
             "seconds": time.perf_counter() - t0, "accepted": best is not None}
        )  # fmt: skip
        if best is not None:
            return best, tried, False
        if time.perf_counter() > deadline:
            return None, tried, True
    return None, tried, False


def start_state(cost, start: np.ndarray, *, warm_start: bool) -> RefineState:
    """The first exact OT of ``start`` (warm from u = 0, v = column minima when ``warm_start``).

    ``cost`` : (N, M) float32 array or RowStore.
    """
    from goracs_ray.select.rowstore import as_store

    members = np.asarray(start, dtype=np.int64).copy()
    cost_members = as_store(cost).rows(members).astype(np.float64)
    # (u = 0, v = column minima) is dual feasible: a warm start for the first solve
    init = (np.zeros(len(members)), cost_members.min(axis=0)) if warm_start else None
    sol = solve_ot(cost_members, potentials_init=init)
    return RefineState(members, sol, [sol.value], [0.0], [])


def refine(
    cost,
    start: np.ndarray,
    *,
    estimator: Estimator = Estimator.CORRECTED,
    max_iters: int = 100,
    cut_num: int = 30,
    batch_size: int = 1,
    warm_start: bool | None = None,
    time_limit: float | None = None,
    tol: float = 1e-12,
    progress: bool = False,
    evaluator=None,
    resume: RefineState | None = None,
    on_accept=None,
) -> RefineResult:
    """Exchange refinement from ``start`` (METHOD.md §4), first-improving batch accepted.

    Parameters
    ----------
    cost : (N, M) float32 array or :class:`goracs_ray.select.rowstore.RowStore`
        POO cost. Memory beyond it: n·M·8 (members' costs) + the OT working set + blocks.
    start : (n,) int64
        Start coreset (e.g. the greedy result).
    estimator : Estimator
        ``faithful`` also keeps the reference's member order: a swap removes the leaving row
        and appends the joining one (``corrected`` replaces it in place).
    max_iters : int
        Maximum accepted swaps.
    cut_num : int
        Candidates kept by inner and by outer pruning (cut_num² pairs per refresh).
    batch_size : int
        Pairs evaluated per round; the best improving pair of the first improving round wins.
    warm_start : bool, optional
        Warm-start every OT solve: the first from (u = 0, v = column minima over S), each swap
        from the current potentials (default: True for ``corrected``, False for ``faithful``,
        which solves every pair cold as the reference does).
    time_limit : float, optional
        Stop (after the current round) once this many seconds have passed.
    tol : float
        A swap is accepted when it lowers POO by more than ``tol``.
    progress : bool
        Show a tqdm bar over accepted swaps.
    evaluator : SwapEvaluator, optional
        Solves candidate swaps (default :class:`goracs_ray.select.rowstore.SerialEvaluator`; the
        distributed module passes a pool of Ray actors — same result for any pool size).
    resume : RefineState, optional
        Continue from this state (a checkpoint) instead of solving ``start`` again.
    on_accept : callable, optional
        ``on_accept(state)`` after the first solve and after each accepted swap (checkpoints).

    Returns
    -------
    RefineResult
        ``info`` holds the per-wave and per-refresh timings.
    """
    from goracs_ray.select.rowstore import SerialEvaluator, as_store

    estimator = Estimator(estimator)
    store = as_store(cost)
    evaluator = evaluator or SerialEvaluator()
    warm = (estimator is Estimator.CORRECTED) if warm_start is None else warm_start
    append = estimator is Estimator.FAITHFUL
    t0 = time.perf_counter()
    deadline = t0 + time_limit if time_limit is not None else math.inf
    if resume is None:
        state = start_state(store, start, warm_start=warm)
        state.seconds[0] = time.perf_counter() - t0
        if on_accept is not None:
            on_accept(state)
    else:
        state = resume
        t0 -= state.seconds[-1]  # the trace's clock goes on from the checkpoint
    cost_members = store.rows(state.members).astype(np.float64)
    reason, waves, refreshes = StopReason.MAX_ITERS, [], []
    bar = tqdm(total=max_iters, desc="exchange", disable=None if progress else True,
               initial=len(state.swaps))  # fmt: skip
    while len(state.swaps) < max_iters:
        if time.perf_counter() > deadline:
            reason = StopReason.TIME_LIMIT
            break
        t_refresh = time.perf_counter()
        duals = dual_columns(cost_members, state.solution.u, state.members)
        cand = store.candidates(duals, state.members, cut_num=cut_num, estimator=estimator)
        refreshes.append({"seconds": time.perf_counter() - t_refresh, "rows_scored": cand.n_scored})
        accepted, tried, timed_out = _try_pairs(
            cand.pairs, cost_members, state, cand.rows, evaluator, batch_size=batch_size,
            warm_start=warm, append=append, tol=tol, deadline=deadline, waves=waves,
        )  # fmt: skip
        state.n_tried += tried
        if accepted is None:
            reason = StopReason.TIME_LIMIT if timed_out else StopReason.NO_IMPROVEMENT
            break
        leave, join, sol = accepted
        pos = int(np.flatnonzero(state.members == leave)[0])
        if append:
            state.members = np.append(np.delete(state.members, pos), join)
            cost_members = np.vstack([np.delete(cost_members, pos, axis=0), cand.rows[join]])
        else:
            state.members[pos] = join
            cost_members[pos] = cand.rows[join]
        state.solution = sol
        state.swaps.append((leave, join))
        state.trace.append(sol.value)
        state.seconds.append(time.perf_counter() - t0)
        if on_accept is not None:
            on_accept(state)
        bar.update(1)
        logger.debug("swap %d: %d -> %d, POO %.6f", len(state.swaps), leave, join, sol.value)
    bar.close()
    return RefineResult(
        indices=state.members,
        poo_trace=np.asarray(state.trace),
        swap_seconds=np.asarray(state.seconds),
        swaps=np.asarray(state.swaps, dtype=np.int64).reshape(-1, 2),
        n_ot_solves=1 + state.n_tried,
        n_pairs_tried=state.n_tried,
        stop_reason=reason,
        info={"evaluators": evaluator.n_workers, "waves": waves, "refreshes": refreshes},
    )
