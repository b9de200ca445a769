"""Distributed ITRA on Ray: the actors, the Ray row store and the OT-evaluator pool — no driver.

Per class (label-enhanced selection runs one per class, through
:func:`goracs_ray.select.itra.select_features`' ``part_runner`` hook):

* ``_ShardActor`` × S hold the float32 cost rows of a contiguous range of training rows
  (:class:`goracs_ray.select.sharded.CostShard`); nothing N×M ever leaves them. The selector
  reaches them as a :class:`goracs_ray.select.rowstore.PartsStore` whose ``call`` fans a shard
  method out to the actors.
* ``_EvaluatorActor`` × W solve exact OT for candidate swaps
  (:func:`goracs_ray.select.refine.evaluate_swap`); :class:`_EvaluatorPool` is the
  :class:`~goracs_ray.select.rowstore.SwapEvaluator` that queues a wave over them.
* ``_SelectorActor`` runs the one ITRA driver (:func:`goracs_ray.select.itra.itra`) on that
  store and pool — the same code as the serial path, so the coreset is the serial one whatever
  W, S and the completion order.

Shard and evaluator actors restart after a crash (``max_restarts``) and Ray retries the
interrupted call; all shard state is rebuilt from each call's arguments, so a restart does not
change the result. That holds for an actor lost with its node too: it restarts on another node
(the inputs it is rebuilt from are owned by the driver, the evaluators' per-wave state by the
selector). ``WorkerSettings.evaluator_resources`` / ``state_resources`` place the stateless
evaluators on preemptible nodes and the selector and shards on stable ones. When the selector
itself dies, :func:`_run_part` starts a new one, which resumes from the selection checkpoint
(``checkpoint_dir``) — again the same result.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from goracs_ray.select.checkpoint import Checkpoint
from goracs_ray.select.compress import compress_validation
from goracs_ray.select.cost import CostScales, cost_scales
from goracs_ray.select.greedy import greedy_init
from goracs_ray.select.itra import CoresetResult, ItraPart, ItraResult, itra, select_features
from goracs_ray.select.options import ItraOptions
from goracs_ray.select.ot import OTSolution
from goracs_ray.select.refine import RefineResult, evaluate_swap, refine
from goracs_ray.select.rowstore import PartsStore
from goracs_ray.select.sharded import CostShard, RecomputedShard, shard_bounds
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
        Restarts of a crashed actor (and retries of its interrupted call), including one lost
        with its node: it is restarted on another node that has room.
    evaluator_resources : dict, optional
        Custom Ray resources each evaluator asks for besides its CPUs, e.g. ``{"spot": 0.01}``
        on a cluster whose preemptible nodes declare ``spot``: evaluators hold no state, so
        losing one costs only a retried call.
    state_resources : dict, optional
        Custom Ray resources the selector and each shard actor ask for, e.g.
        ``{"on_demand": 0.01}``, to keep the actors that hold the cost and the ITRA state on
        stable nodes (a lost shard is rebuilt, a lost selector needs a checkpoint).
    """

    evaluators: int = 2
    shards: int = 2
    actor_cpus: float = 0.25
    max_restarts: int = 3
    evaluator_resources: dict[str, float] | None = None
    state_resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for name in ("evaluators", "shards"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if not self.actor_cpus > 0:
            raise ValueError(f"`actor_cpus` must be > 0, got {self.actor_cpus!r}")
        for name in ("evaluator_resources", "state_resources"):
            value = getattr(self, name)
            if value is not None and not all(
                isinstance(k, str) and k not in ("CPU", "GPU") and v > 0 for k, v in value.items()
            ):
                raise ValueError(
                    f"`{name}` must map custom resource names (not CPU/GPU) to amounts > 0, "
                    f"got {value!r}"
                )

    def options(self, role: str) -> dict[str, Any]:
        """Ray actor options of a ``"selector"``, ``"shard"`` or ``"evaluator"`` actor."""
        extra = self.evaluator_resources if role == "evaluator" else self.state_resources
        opts: dict[str, Any] = {"num_cpus": self.actor_cpus}
        if role != "selector":
            opts.update(max_restarts=self.max_restarts, max_task_retries=self.max_restarts)
        if extra:
            opts["resources"] = dict(extra)
        return opts


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Test hook: make one actor ``os._exit`` once, on its ``call``-th call of ``method``.

    ``marker`` is a file created just before the crash; a restarted actor sees it and carries on.
    With ``stall_s`` > 0 the actor does not exit: it writes the marker and sleeps that long in
    the middle of the call (a test removes the actor's node meanwhile), then carries on.
    """

    target: str
    """``"evaluator"``, ``"shard"`` or ``"selector"`` (method ``"swap"``: after the call-th
    checkpointed swap)."""
    index: int
    method: str
    call: int
    marker: str
    stall_s: float = 0.0


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
            if plan.stall_s > 0:
                time.sleep(plan.stall_s)
                return
            os._exit(1)


class _ShardActor:
    """Ray wrapper of a row shard: its cost rows stored (:class:`CostShard`), or recomputed on
    demand in blocks of ``memory_bytes`` (:class:`RecomputedShard`); every call after the first
    carries the cost scales."""

    def __init__(self, train_emb, valid_emb, grad_norms, start, fault=None, memory_bytes=None):
        if memory_bytes is None:
            self.shard = CostShard(train_emb, valid_emb, grad_norms, start=start)
        else:
            self.shard = RecomputedShard(
                train_emb, valid_emb, grad_norms, start=start, memory_bytes=memory_bytes
            )
        self.fault = _FaultCounter(fault)

    def extrema(self):
        return self.shard.extrema()

    def run(self, scales: CostScales, method: str, *args: Any, **kwargs: Any) -> Any:
        """Normalise with ``scales`` (idempotent; rebuilds a restarted shard), then ``method``."""
        self.fault.tick(method)
        self.shard.normalize(scales)
        return getattr(self.shard, method)(*args, **kwargs)


class _EvaluatorActor:
    """Exact OT of candidate swaps against the current members (state passed per call)."""

    def __init__(self, fault=None) -> None:
        self.fault = _FaultCounter(fault)

    def evaluate(self, state, position, new_row, warm_start, append) -> OTSolution:
        self.fault.tick("evaluate")
        cost_members, solution = state
        return evaluate_swap(
            cost_members, solution, position, new_row, warm_start=warm_start, append=append
        )


class _EvaluatorPool:
    """:class:`~goracs_ray.select.rowstore.SwapEvaluator` over evaluator actors (dynamic queue)."""

    def __init__(self, evaluators: list[Any]) -> None:
        self.evaluators = evaluators
        self.n_workers = len(evaluators)
        self._key: tuple[int, int] | None = None
        self._state = None

    def evaluate(self, pairs, cost_members, solution, position, rows, *, warm_start, append):
        key = (id(cost_members), id(solution))
        if key != self._key:  # one object-store copy of the members' costs per refresh
            self._key, self._state = key, ray.put((cost_members, solution))
        results: list[OTSolution | None] = [None] * len(pairs)
        todo = list(enumerate(np.asarray(pairs).tolist()))[::-1]
        pending: dict[Any, tuple[int, Any]] = {}

        def submit(evaluator: Any) -> None:
            k, (leave, join) = todo.pop()
            ref = evaluator.evaluate.remote(
                self._state, position[leave], rows[join], warm_start, append
            )
            pending[ref] = (k, evaluator)

        for evaluator in self.evaluators:
            if todo:
                submit(evaluator)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k, evaluator = pending.pop(done[0])
            results[k] = ray.get(done[0])
            if todo:
                submit(evaluator)
        return results


def _fault_for(fault: FaultPlan | None, target: str, index: int) -> FaultPlan | None:
    return fault if fault is not None and fault.target == target and fault.index == index else None


class _SelectorActor:
    """Runs the ITRA driver for one cost matrix on the shard store and the evaluator pool."""

    def __init__(
        self, shard_inputs, grad_norms, settings: WorkerSettings, fault=None, memory_bytes=None
    ) -> None:
        self.shards = [
            _Shard.options(**settings.options("shard")).remote(
                train, valid, grads, start, _fault_for(fault, "shard", k), memory_bytes
            )
            for k, (train, valid, grads, start) in enumerate(shard_inputs[0])
        ]
        self.evaluators = [
            _Evaluator.options(**settings.options("evaluator")).remote(
                _fault_for(fault, "evaluator", k)
            )
            for k in range(settings.evaluators)
        ]
        self.fault = _FaultCounter(_fault_for(fault, "selector", 0))
        self.grad_norms = grad_norms
        self.n_rows = 0
        self.scales: CostScales | None = None

    def prepare(self, cost_options: dict[str, Any]) -> CostScales:
        """Wait for the shards' distances, then normalise them with the global scales."""
        parts = ray.get([s.extrema.remote() for s in self.shards])
        self.n_rows = sum(len(p[0]) for p in parts)
        self.scales = cost_scales(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            self.grad_norms,
            lam=cost_options["lam"],
            divide_distance=cost_options["divide_distance"],
            grad_max=cost_options["grad_max"],
        )
        self._call("normalize", self.scales)
        return self.scales

    def _call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return ray.get([s.run.remote(self.scales, method, *args, **kwargs) for s in self.shards])

    def store(self) -> PartsStore:
        """The Ray row store: the shard actors behind the common :class:`PartsStore`."""
        return PartsStore(self._call, self.n_rows)

    def drop_row_caches(self) -> None:
        """Free the shards' candidate-row caches (recomputed rows; answers are unchanged)."""
        self._call("drop_row_cache")

    def row_cache_stats(self) -> list[dict[str, int]]:
        """Per shard: its candidate-row cache's capacity, rows held, hits and misses."""
        return self._call("row_cache_stats")

    def _pool(self, n_workers: int | None) -> _EvaluatorPool:
        return _EvaluatorPool(self.evaluators[: n_workers or len(self.evaluators)])

    def greedy(self, n: int, trim_inactive: bool, reference_arithmetic: bool = False):
        """Stage 1 alone (:func:`greedy_init` on the shard store) -> GreedyResult."""
        store = self.store()
        return greedy_init(
            store, n, trim_inactive=trim_inactive, reference_arithmetic=reference_arithmetic
        )

    def refine(self, start: np.ndarray, options: ItraOptions, n_workers: int | None = None):
        """Stage 2 alone (:func:`refine` on the shard store and ``n_workers`` evaluators).

        Returns (RefineResult, its info dict with the evaluator and shard counts).
        """
        o = options
        ref: RefineResult = refine(
            self.store(), start, estimator=o.estimator, max_iters=o.max_iters,
            cut_num=o.cut_num, batch_size=o.batch_size, warm_start=o.warm_start,
            time_limit=o.time_limit, tol=o.tol, evaluator=self._pool(n_workers),
        )  # fmt: skip
        return ref, {**ref.info, "shards": len(self.shards)}

    def run(self, n: int, options: ItraOptions, checkpoint: Checkpoint | None) -> ItraResult:
        """Greedy + refinement (:func:`itra`), resuming from and writing ``checkpoint``."""
        if checkpoint is not None:
            checkpoint.after_save = lambda: self.fault.tick("swap")
        return itra(self.store(), n, options=options, evaluator=self._pool(None),
                    checkpoint=checkpoint)  # fmt: skip


_Shard = ray.remote(_ShardActor)
_Evaluator = ray.remote(_EvaluatorActor)
_Selector = ray.remote(_SelectorActor)


def start_selector(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    *,
    workers: WorkerSettings,
    fault: FaultPlan | None = None,
    memory_bytes: int | None = None,
) -> tuple[Any, list[Any]]:
    """Put the inputs in the object store and start the selector (which starts its actors).

    Returns the selector handle and the object refs it needs (keep them alive while it runs).
    Memory: the shard actors together hold N·M·4 bytes of cost; the object store N·d·4 + M·d·4.
    With ``memory_bytes`` the shards store no cost: they recompute rows on demand in blocks
    whose temporaries fit that budget (N·(d + 64)·4 bytes in all, plus the budget per shard).
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
    selector = _Selector.options(**workers.options("selector")).remote(
        [inputs], grad_norms, workers, fault, memory_bytes
    )
    return selector, inputs


def _run_part(
    part: ItraPart,
    *,
    progress: bool = False,
    workers: WorkerSettings,
    fault: FaultPlan | None,
    compress_valid: int | None,
) -> ItraResult:
    """The Ray :data:`goracs_ray.select.itra.PartRunner`: sharded cost, then the ITRA driver.

    A selector that dies is replaced (up to ``workers.max_restarts`` times) and the new one
    resumes from ``part.checkpoint``; without a checkpoint the error is raised.
    """
    del progress  # no bars inside actors
    t_start = time.perf_counter()
    valid_emb, checkpoint, target = part.valid_emb, part.checkpoint, None
    if compress_valid is not None and len(valid_emb) > compress_valid:
        target = compress_validation(valid_emb, compress_valid)
        valid_emb = target.points
    for attempt in range(workers.max_restarts + 1):
        selector, _inputs = start_selector(
            part.train_emb, valid_emb, part.grad_norms, workers=workers, fault=fault,
            memory_bytes=part.cost_options.get("memory_bytes"),
        )  # fmt: skip
        try:
            t0 = time.perf_counter()
            scales = ray.get(selector.prepare.remote(part.cost_options))
            t1 = time.perf_counter()
            result = ray.get(selector.run.remote(part.budget, part.options, checkpoint))
            break
        except ray.exceptions.RayActorError:
            if checkpoint is None or attempt == workers.max_restarts:
                raise
            logger.warning("the selector actor died; a new one resumes from %s", checkpoint.path)
            checkpoint = Checkpoint(checkpoint.path, checkpoint.key)
        finally:
            ray.kill(selector)
    info: dict[str, Any] = {"evaluators": workers.evaluators, "shards": workers.shards}
    if result.refinement is not None:
        info.update(result.refinement.info)
    info = {"distributed": info, "selector_restarts": attempt}
    if target is not None:
        bound = target.poo_change_bound(scales)
        info["compression"] = {
            "n_valid": target.n_valid, "m": len(target.points), "seconds": t0 - t_start,
            "transport_distance": target.transport_distance, "poo_change_bound": bound,
        }  # fmt: skip
        logger.info(
            "validation compressed %d -> %d points: |ΔPOO| <= %.4g (POO %.6f)",
            target.n_valid, len(target.points), bound, result.poo,
        )  # fmt: skip
    return dataclasses.replace(result, seconds={"cost": t1 - t0, **result.seconds}, info=info)


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
        evaluator and the extra pairs are speculative. ``device`` must be ``cpu``: the shard
        actors compute their cost rows with numpy.

    Returns
    -------
    CoresetResult
        ``parts[k].info["distributed"]`` holds per-wave timings and worker counts. Memory: the
        shard actors hold N_k·M_k·4 bytes of cost in total; the driver O(N + M·d).
    """
    from goracs_ray.raycluster import ensure_ray

    if options.get("device", "cpu") != "cpu":
        raise ValueError(
            f"`select.device` {options['device']!r} needs the serial path: the Ray shard actors "
            "compute cost rows on CPU; set `distributed: false` or `device: cpu`"
        )
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
    if options.get("device") == "auto":
        logger.info("select.device auto: distributed shards compute cost rows on CPU")
        options = {**options, "device": "cpu"}
    workers = WorkerSettings(evaluators=cfg.workers, shards=cfg.shards or cfg.workers)
    result = select_distributed(
        features, cfg.budget, workers=workers, compress_valid=cfg.compress_valid, **options
    )
    return _to_selection(result, cfg.method, cfg.seed)
