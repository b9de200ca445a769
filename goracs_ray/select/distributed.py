"""Distributed ITRA on Ray: a selector actor, row-shard actors and a pool of OT evaluators.

Per class (label-enhanced selection runs one per class, through
:func:`goracs_ray.select.itra.select_features`' ``part_runner`` hook):

* ``_ShardActor`` × S hold the float32 cost rows of a contiguous range of training rows
  (:class:`goracs_ray.select.sharded.CostShard`); nothing N×M ever leaves them.
* ``_EvaluatorActor`` × W solve exact OT for candidate swaps
  (:func:`goracs_ray.select.refine.evaluate_swap`, warm-started).
* ``_SelectorActor`` owns ITRA's state (S, the members' cost rows, the OT solution and duals, the
  trace) and calls the pure core; it reduces the shards' O(M)/O(cut_num·M) answers.

Commit rule: candidate pairs are evaluated in waves of ``batch_size·⌈W/batch_size⌉`` pairs; after a
wave the first batch (in the canonical pair order) holding an improving pair gives its best pair
(ties to the earlier one) — exactly the serial ``refine(batch_size=...)`` rule, so the coreset is
the serial one whatever W and the completion order. Actors restart after a crash
(``max_restarts``) and Ray retries the interrupted call; all shard state is rebuilt from each
call's arguments, so a restart does not change the result.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from goracs_ray.select.compress import compress_validation
from goracs_ray.select.cost import CostScales, cost_scales
from goracs_ray.select.greedy import ColumnSupport, GreedyResult, finish_greedy, needs_more
from goracs_ray.select.itra import CoresetResult, ItraResult, select_features
from goracs_ray.select.ot import OTSolution, solve_ot
from goracs_ray.select.refine import (
    Estimator,
    RefineResult,
    StopReason,
    candidate_pairs,
    dual_columns,
    evaluate_swap,
)
from goracs_ray.select.sharded import CostShard, merge_column_argmin, shard_bounds
from goracs_ray.select.types import FeatureTable

__all__ = [
    "FaultPlan",
    "WorkerSettings",
    "run_distributed_selector",
    "select_distributed",
    "start_selector",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """The Ray actors of one distributed selection.

    Attributes
    ----------
    evaluators : int
        OT-evaluator actors (W).
    shards : int
        Row-shard actors (S) holding the cost.
    actor_cpus : float
        Logical CPUs reserved per actor (fractional on small machines).
    max_restarts : int
        Restarts of a crashed actor (and retries of its interrupted call).
    """

    evaluators: int = 2
    shards: int = 2
    actor_cpus: float = 0.25
    max_restarts: int = 3

    def __post_init__(self) -> None:
        for name in ("evaluators", "shards"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if not self.actor_cpus > 0:
            raise ValueError(f"`actor_cpus` must be > 0, got {self.actor_cpus!r}")


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Test hook: make one actor ``os._exit`` once, on its ``call``-th call of ``method``.

    ``marker`` is a file created just before the crash; a restarted actor sees it and carries on.
    """

    target: str
    """``"evaluator"`` or ``"shard"``."""
    index: int
    method: str
    call: int
    marker: str


class _FaultCounter:
    def __init__(self, plan: FaultPlan | None) -> None:
        self.plan, self.calls = plan, 0

    def tick(self, method: str) -> None:
        plan = self.plan
        if plan is None or method != plan.method:
            return
        self.calls += 1
        if self.calls == plan.call and not os.path.exists(plan.marker):
            Path(plan.marker).write_text(str(os.getpid()))
            os._exit(1)


class _ShardActor:
    """Ray wrapper of :class:`CostShard`; every call after the first carries the cost scales."""

    def __init__(self, train_emb, valid_emb, grad_norms, start, fault=None) -> None:
        self.shard = CostShard(train_emb, valid_emb, grad_norms, start=start)
        self.fault = _FaultCounter(fault)

    def extrema(self):
        return self.shard.extrema()

    def _ready(self, method: str, scales: CostScales) -> CostShard:
        self.fault.tick(method)
        self.shard.normalize(scales)
        return self.shard

    def normalize(self, scales) -> None:
        self._ready("normalize", scales)

    def row_sums(self, scales):
        return self._ready("row_sums", scales).row_sums()

    def column_argmin(self, scales):
        return self._ready("column_argmin", scales).column_argmin()

    def rows(self, scales, ids):
        shard = self._ready("rows", scales)
        ids = np.asarray(ids, dtype=np.int64)
        mask = shard.owns(ids)
        return mask, shard.rows(ids[mask])

    def greedy_best(self, scales, col_min, chosen):
        return self._ready("greedy_best", scales).greedy_best(col_min, chosen)

    def candidates(self, scales, duals, members, cut_num, estimator):
        shard = self._ready("candidates", scales)
        return shard.candidates(duals, members, cut_num=cut_num, estimator=estimator)

    def n_gain_evals(self) -> int:
        return self.shard.n_gain_evals


class _EvaluatorActor:
    """Exact OT of candidate swaps against the current members (state passed per call)."""

    def __init__(self, fault=None) -> None:
        self.fault = _FaultCounter(fault)

    def evaluate(self, state, position, new_row, warm_start) -> OTSolution:
        self.fault.tick("evaluate")
        cost_members, solution = state
        return evaluate_swap(cost_members, solution, position, new_row, warm_start=warm_start)


def _fault_for(fault: FaultPlan | None, target: str, index: int) -> FaultPlan | None:
    return fault if fault is not None and fault.target == target and fault.index == index else None


class _SelectorActor:
    """Owns ITRA's state for one cost matrix; drives the shard and evaluator actors."""

    def __init__(self, shard_inputs, grad_norms, settings: WorkerSettings, fault=None) -> None:
        opts = {
            "num_cpus": settings.actor_cpus,
            "max_restarts": settings.max_restarts,
            "max_task_retries": settings.max_restarts,
        }
        self.shards = [
            _Shard.options(**opts).remote(train, valid, grads, start, _fault_for(fault, "shard", k))
            for k, (train, valid, grads, start) in enumerate(shard_inputs[0])
        ]
        self.evaluators = [
            _Evaluator.options(**opts).remote(_fault_for(fault, "evaluator", k))
            for k in range(settings.evaluators)
        ]
        self.grad_norms = grad_norms
        self.scales: CostScales | None = None

    def prepare(self, cost_options: dict[str, Any]) -> CostScales:
        """Wait for the shards' distances, then normalise them with the global scales."""
        parts = ray.get([s.extrema.remote() for s in self.shards])
        self.scales = cost_scales(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            self.grad_norms,
            lam=cost_options["lam"],
            divide_distance=cost_options["divide_distance"],
            grad_max=cost_options["grad_max"],
        )
        self._all("normalize")
        return self.scales

    def _all(self, method: str, *args: Any) -> list[Any]:
        return ray.get([getattr(s, method).remote(self.scales, *args) for s in self.shards])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Cost rows of ``ids`` gathered from the shards, (k, M) float32 in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        parts = self._all("rows", ids)
        out = np.empty((len(ids), parts[0][1].shape[1]), dtype=np.float32)
        for mask, rows in parts:
            out[mask] = rows
        return out

    def greedy(self, n: int, trim_inactive: bool) -> GreedyResult:
        """Stage 1 across shards: same semantics and result as ``greedy_init``."""
        sums = np.concatenate(self._all("row_sums"))
        first = int(np.argmin(sums))
        owners = merge_column_argmin(self._all("column_argmin"))[1] if trim_inactive else None
        trim = trim_inactive and len(np.unique(owners)) > n
        support = ColumnSupport(self.rows([first])[0])
        chosen = [first]
        while needs_more(support, len(chosen), n, trim):
            answers = self._all("greedy_best", support.col_min, np.asarray(chosen))
            answers = [a for a in answers if a is not None]
            if not answers:
                break
            gain, row, cost_row = min(answers, key=lambda a: (a[0], a[1]))
            if gain >= 0.0:
                break
            chosen.append(row)
            support.add(cost_row)
        n_added = len(chosen)
        indices, n_fill = finish_greedy(len(sums), chosen, support, n, trim, sums)
        return GreedyResult(
            indices=indices,
            order=np.array(chosen, dtype=np.int64),
            n_added=n_added,
            n_zero_gain=n_fill,
            n_gain_evals=sum(ray.get([s.n_gain_evals.remote() for s in self.shards])),
            trimmed=trim and n_fill == 0 and n_added > n,
        )

    def poo(self, indices: np.ndarray) -> float:
        """POO of a coreset (one exact OT)."""
        return solve_ot(self.rows(indices)).value

    def _pairs(self, duals, members, cut_num, estimator):
        """Canonical candidate pairs from the shards' top candidates, and the joining rows."""
        answers = self._all("candidates", duals, members, cut_num, estimator)
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
        return ids[pairs], rows, sum(a.n_scored for a in answers)

    def _evaluate(self, chunk, state, position, rows, warm, n_workers) -> list[OTSolution]:
        """Exact OT of each pair of ``chunk``, on up to ``n_workers`` evaluators; in order."""
        results: list[OTSolution | None] = [None] * len(chunk)
        todo = list(enumerate(chunk.tolist()))[::-1]
        pending: dict[Any, tuple[int, Any]] = {}

        def submit(evaluator: Any) -> None:
            k, (leave, join) = todo.pop()
            ref = evaluator.evaluate.remote(state, position[leave], rows[join], warm)
            pending[ref] = (k, evaluator)

        for evaluator in self.evaluators[:n_workers]:
            if todo:
                submit(evaluator)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k, evaluator = pending.pop(done[0])
            results[k] = ray.get(done[0])
            if todo:
                submit(evaluator)
        return results  # type: ignore[return-value]

    def _waves(self, pairs, state, members, rows, solution, opts, n_workers, deadline, log):
        """Evaluate ``pairs`` wave by wave; the serial commit rule picks the accepted pair."""
        batch, tol = opts["batch_size"], opts["tol"]
        wave = batch * math.ceil(n_workers / batch)
        position = {int(r): p for p, r in enumerate(members)}
        tried = 0
        for w0 in range(0, len(pairs), wave):
            chunk = pairs[w0 : w0 + wave]
            t0 = time.perf_counter()
            sols = self._evaluate(chunk, state, position, rows, opts["warm_start"], n_workers)
            tried += len(chunk)
            best = None
            for b0 in range(0, len(chunk), batch):
                for k in range(b0, min(b0 + batch, len(chunk))):
                    sol = sols[k]
                    if sol.value < solution.value - tol and (
                        best is None or sol.value < best[2].value
                    ):
                        best = (int(chunk[k, 0]), int(chunk[k, 1]), sol)
                if best is not None:
                    break
            log.append(
                {"pairs": len(chunk), "workers": min(n_workers, len(chunk)),
                 "seconds": time.perf_counter() - t0, "accepted": best is not None}
            )  # fmt: skip
            if best is not None:
                return best, tried, False
            if time.perf_counter() > deadline:
                return None, tried, True
        return None, tried, False

    def refine(self, start: np.ndarray, opts: dict[str, Any], n_workers: int | None = None):
        """Stage 2 with waves of parallel OT evaluations; returns (RefineResult, trace dict).

        ``opts``: estimator, max_iters, cut_num, batch_size, warm_start, time_limit, tol.
        """
        estimator = Estimator(opts["estimator"])
        n_workers = len(self.evaluators) if n_workers is None else n_workers
        t0 = time.perf_counter()
        limit = opts["time_limit"]
        deadline = t0 + limit if limit is not None else math.inf
        members = np.asarray(start, dtype=np.int64).copy()
        cost_members = self.rows(members).astype(np.float64)
        # the serial refine's first solve: warm from (u = 0, v = column minima) when warm
        init = (np.zeros(len(members)), cost_members.min(axis=0)) if opts["warm_start"] else None
        solution = solve_ot(cost_members, potentials_init=init)
        trace, seconds, swaps = [solution.value], [time.perf_counter() - t0], []
        n_tried, reason, waves, refreshes = 0, StopReason.MAX_ITERS, [], []
        while len(swaps) < opts["max_iters"]:
            if time.perf_counter() > deadline:
                reason = StopReason.TIME_LIMIT
                break
            t_refresh = time.perf_counter()
            duals = dual_columns(cost_members, solution.u, members)
            pairs, rows, n_scored = self._pairs(duals, members, opts["cut_num"], estimator)
            refreshes.append({"seconds": time.perf_counter() - t_refresh, "rows_scored": n_scored})
            state = ray.put((cost_members, solution))
            accepted, tried, timed_out = self._waves(
                pairs, state, members, rows, solution, opts, n_workers, deadline, waves
            )
            n_tried += tried
            if accepted is None:
                reason = StopReason.TIME_LIMIT if timed_out else StopReason.NO_IMPROVEMENT
                break
            leave, join, solution = accepted
            pos = int(np.flatnonzero(members == leave)[0])
            members[pos] = join
            cost_members[pos] = rows[join]
            swaps.append((leave, join))
            trace.append(solution.value)
            seconds.append(time.perf_counter() - t0)
        result = RefineResult(
            indices=members,
            poo_trace=np.asarray(trace),
            swap_seconds=np.asarray(seconds),
            swaps=np.asarray(swaps, dtype=np.int64).reshape(-1, 2),
            n_ot_solves=1 + n_tried,
            n_pairs_tried=n_tried,
            stop_reason=reason,
        )
        info = {"evaluators": n_workers, "shards": len(self.shards), "waves": waves}
        return result, {**info, "refreshes": refreshes}


_Shard = ray.remote(_ShardActor)
_Evaluator = ray.remote(_EvaluatorActor)
_Selector = ray.remote(_SelectorActor)


def _refine_options(itra_options: dict[str, Any]) -> dict[str, Any]:
    estimator = Estimator(itra_options["estimator"])
    return {
        "estimator": estimator,
        "max_iters": itra_options["max_iters"],
        "cut_num": itra_options["cut_num"],
        "batch_size": itra_options["batch_size"],
        "warm_start": estimator is Estimator.CORRECTED,
        "time_limit": itra_options["time_limit"],
        "tol": 1e-12,
    }


def start_selector(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    *,
    workers: WorkerSettings,
    fault: FaultPlan | None = None,
) -> tuple[Any, list[Any]]:
    """Put the inputs in the object store and start the selector (which starts its actors).

    Returns the selector handle and the object refs it needs (keep them alive while it runs).
    Memory: the shard actors together hold N·M·4 bytes of cost; the object store N·d·4 + M·d·4.
    """
    valid_ref = ray.put(np.ascontiguousarray(valid_emb, dtype=np.float32))
    inputs = [
        (
            ray.put(np.ascontiguousarray(train_emb[a:b], dtype=np.float32)),
            valid_ref,
            None if grad_norms is None else ray.put(np.asarray(grad_norms[a:b], dtype=np.float32)),
            a,
        )
        for a, b in shard_bounds(len(train_emb), workers.shards)
    ]
    selector = _Selector.options(num_cpus=workers.actor_cpus).remote(
        [inputs], grad_norms, workers, fault
    )
    return selector, inputs


def _run_part(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    n_k: int,
    cost_options: dict[str, Any],
    itra_options: dict[str, Any],
    *,
    workers: WorkerSettings,
    fault: FaultPlan | None,
    compress_valid: int | None,
) -> ItraResult:
    """The Ray :data:`goracs_ray.select.itra.PartRunner`: sharded cost, greedy, waves."""
    t_start = time.perf_counter()
    target = None
    if compress_valid is not None and len(valid_emb) > compress_valid:
        target = compress_validation(valid_emb, compress_valid)
        valid_emb = target.points
    selector, _inputs = start_selector(
        train_emb, valid_emb, grad_norms, workers=workers, fault=fault
    )
    try:
        t0 = time.perf_counter()
        scales = ray.get(selector.prepare.remote(cost_options))
        t1 = time.perf_counter()
        estimator = Estimator(itra_options["estimator"])
        trim = itra_options["trim_inactive"]
        trim = (estimator is Estimator.FAITHFUL) if trim is None else trim
        greedy = ray.get(selector.greedy.remote(n_k, trim))
        t2 = time.perf_counter()
        info: dict[str, Any] = {"evaluators": workers.evaluators, "shards": workers.shards}
        if itra_options["refine_stage"] and itra_options["max_iters"] > 0:
            opts = _refine_options(itra_options)
            ref, info = ray.get(selector.refine.remote(greedy.indices, opts))
            indices, trace, solves = ref.indices, ref.poo_trace, ref.n_ot_solves
        else:
            ref, indices, solves = None, greedy.indices, 1
            trace = np.array([ray.get(selector.poo.remote(greedy.indices))])
        t3 = time.perf_counter()
    finally:
        ray.kill(selector)
    info = {"distributed": info}
    if target is not None:
        bound = target.poo_change_bound(scales)
        info["compression"] = {
            "n_valid": target.n_valid, "m": len(target.points), "seconds": t0 - t_start,
            "transport_distance": target.transport_distance, "poo_change_bound": bound,
        }  # fmt: skip
        logger.info(
            "validation compressed %d -> %d points: |ΔPOO| <= %.4g (POO %.6f)",
            target.n_valid, len(target.points), bound, trace[-1],
        )  # fmt: skip
    return ItraResult(
        indices=indices,
        greedy=greedy,
        refinement=ref,
        poo_trace=trace,
        n_ot_solves=solves,
        seconds={"cost": t1 - t0, "greedy": t2 - t1, "refine": t3 - t2},
        info=info,
    )


def select_distributed(
    features: FeatureTable,
    budget: int,
    *,
    workers: WorkerSettings | None = None,
    compress_valid: int | None = None,
    fault: FaultPlan | None = None,
    **options: Any,
) -> CoresetResult:
    """GORACS on Ray: the same coreset as :func:`goracs_ray.select.itra.select_features`.

    Parameters
    ----------
    features : FeatureTable
    budget : int
    workers : WorkerSettings, optional
        Evaluators, shards, CPUs per actor, restarts (default :class:`WorkerSettings`).
    compress_valid : int, optional
        Compress each (class's) validation set larger than this to this many balanced points
        (:func:`goracs_ray.select.compress.compress_validation`); the trace and the log give
        the bound on the POO change (``parts[k].info["compression"]``).
    fault : FaultPlan, optional
        Test hook: crash one actor once mid-selection.
    **options
        As :func:`select_features` (``lam``, ``estimator``, ``max_iters``, ``cut_num``,
        ``batch_size``, ...). Use ``batch_size`` ≥ evaluators, else a wave has one pair per
        evaluator and the extra pairs are speculative.

    Returns
    -------
    CoresetResult
        ``parts[k].info["distributed"]`` holds per-wave timings and worker counts. Memory: the
        shard actors hold N_k·M_k·4 bytes of cost in total; the driver O(N + M·d).
    """
    from goracs_ray.raycluster import ensure_ray

    ensure_ray()
    workers = workers or WorkerSettings()
    result = select_features(
        features,
        budget,
        part_runner=functools.partial(
            _run_part, workers=workers, fault=fault, compress_valid=compress_valid
        ),
        **options,
    )
    settings = {
        **result.settings,
        "distributed": dataclasses.asdict(workers),
        "compress_valid": compress_valid,
    }
    return dataclasses.replace(result, settings=settings)


def run_distributed_selector(cfg: Any, features: FeatureTable, options: dict[str, Any]):
    """:func:`goracs_ray.select.config.run_select` with ``cfg.distributed``: a GORACS Selection.

    ``cfg`` is a :class:`goracs_ray.select.config.SelectConfig` (``workers``, ``shards``);
    ``options`` its method options. ``goracs_greedy`` skips the refinement stage.
    """
    from goracs_ray.select.itra import _to_selection

    if cfg.method == "goracs_greedy":
        options = {**options, "refine_stage": False}
    workers = WorkerSettings(evaluators=cfg.workers, shards=cfg.shards or cfg.workers)
    result = select_distributed(
        features, cfg.budget, workers=workers, compress_valid=cfg.compress_valid, **options
    )
    return _to_selection(result, cfg.method, cfg.seed)
