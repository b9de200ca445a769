"""GORACS selection: POO cost → greedy (stage 1) → exchange refinement (stage 2), per class.

Public entry points: :func:`select_coreset` (arrays in, :class:`CoresetResult` out),
:func:`select_features` (a validated :class:`FeatureTable`), and the registry methods ``goracs``
(full ITRA) and ``goracs_greedy`` (stage 1 only).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from goracs_ray.select.checkpoint import Checkpoint, input_digest
from goracs_ray.select.cost import DEFAULT_BLOCK_ROWS, cost_matrix
from goracs_ray.select.greedy import GreedyResult, greedy_init
from goracs_ray.select.kernels import resolve_device
from goracs_ray.select.options import ItraOptions
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.refine import Estimator, RefineResult, refine
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = [
    "CoresetResult",
    "ItraResult",
    "ItraPart",
    "PartRunner",
    "itra",
    "label_budgets",
    "run_part_local",
    "select_coreset",
    "select_features",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class ItraResult:
    """ITRA on one cost matrix.

    Attributes
    ----------
    indices : (n,) int64
        Selected rows of the cost matrix.
    greedy : GreedyResult
        Stage 1.
    refinement : RefineResult or None
        Stage 2 (None when only the greedy stage ran).
    poo_trace : (k + 1,) float64
        POO after greedy, then after each accepted swap.
    n_ot_solves : int
        Exact OT problems solved.
    seconds : dict[str, float]
        Wall time of "greedy" and "refine" (and "cost" when the runner built the cost).
    info : dict[str, Any]
        Extra JSON-serialisable trace of the runner (e.g. per-wave timings when distributed).
    """

    indices: np.ndarray
    greedy: GreedyResult
    refinement: RefineResult | None
    poo_trace: np.ndarray
    n_ot_solves: int
    seconds: dict[str, float]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def poo_greedy(self) -> float:
        """POO of the greedy start."""
        return float(self.poo_trace[0])

    @property
    def poo(self) -> float:
        """POO of the final coreset."""
        return float(self.poo_trace[-1])


def itra(
    cost,
    n: int,
    *,
    options: ItraOptions | None = None,
    evaluator=None,
    checkpoint: Checkpoint | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> ItraResult:
    """Run ITRA (METHOD.md §3–4) on one POO cost: the one driver for every backend.

    Parameters
    ----------
    cost : (N, M) float32 array or :class:`goracs_ray.select.rowstore.RowStore`
        POO cost (:func:`goracs_ray.select.cost.cost_matrix`, or a row store: recomputed rows,
        Ray row shards). Memory: see :func:`refine`.
    n : int
        Budget.
    options : ItraOptions, optional
        Estimator, max_iters, cut_num, trim, batch size, ... (default: built from ``kwargs``).
    evaluator : SwapEvaluator, optional
        Solves candidate swaps (default: in this process).
    checkpoint : Checkpoint, optional
        Resume from it and rewrite it after the greedy stage and every accepted swap.
    progress : bool
        tqdm bars over greedy steps and exchanges.
    **kwargs
        :class:`ItraOptions` fields, when ``options`` is not given.
    """
    from goracs_ray.select.rowstore import as_store

    opts = options if options is not None else ItraOptions(**kwargs)
    store = as_store(cost)
    t0 = time.perf_counter()
    greedy = None if checkpoint is None else checkpoint.load_greedy()
    if greedy is None:
        greedy = greedy_init(
            store, n, trim_inactive=opts.trim_inactive, reference_arithmetic=opts.faithful,
            progress=progress,
        )  # fmt: skip
        if checkpoint is not None:
            checkpoint.save_greedy(greedy)
    t1 = time.perf_counter()
    if opts.refines:
        ref = refine(
            store, greedy.indices, estimator=opts.estimator, max_iters=opts.max_iters,
            cut_num=opts.cut_num, batch_size=opts.batch_size, warm_start=opts.warm_start,
            time_limit=opts.time_limit, tol=opts.tol, progress=progress, evaluator=evaluator,
            resume=None if checkpoint is None else checkpoint.load_refine(),
            on_accept=None if checkpoint is None else checkpoint.save_refine,
        )  # fmt: skip
        indices, trace, solves = ref.indices, ref.poo_trace, ref.n_ot_solves
    else:
        ref = None
        indices, solves = greedy.indices, 1
        trace = np.array([solve_ot(store.rows(greedy.indices)).value])
    t2 = time.perf_counter()
    return ItraResult(
        indices=indices,
        greedy=greedy,
        refinement=ref,
        poo_trace=trace,
        n_ot_solves=solves,
        seconds={"greedy": t1 - t0, "refine": t2 - t1},
    )


def label_budgets(train_labels: np.ndarray, valid_labels: np.ndarray, n: int) -> dict[int, int]:
    """Split budget n across classes by their validation shares (METHOD.md §5).

    ``n_k = round(n · share_k)`` for every class but the smallest label, which takes the rest
    (the reference: ``n_pos = round(p · n)``, ``n_neg = n - n_pos``).

    Parameters
    ----------
    train_labels : (N,) int64
    valid_labels : (M,) int64
    n : int

    Returns
    -------
    dict[int, int]
        Class → budget, every class of the validation set, ascending; Σ = n.

    Raises
    ------
    ValueError
        When a class budget exceeds the number of training samples of that class.
    """
    classes, counts = np.unique(valid_labels, return_counts=True)
    budgets: dict[int, int] = {}
    for cls, count in zip(classes[::-1][:-1], counts[::-1][:-1]):
        budgets[int(cls)] = int(round(n * count / len(valid_labels)))
    budgets[int(classes[0])] = n - sum(budgets.values())
    if budgets[int(classes[0])] < 0:
        raise ValueError(
            f"`budget` {n} is too small to split over {len(classes)} classes by rounding; "
            "raise the budget or merge rare classes"
        )
    for cls, n_k in budgets.items():
        available = int((train_labels == cls).sum())
        if n_k > available:
            raise ValueError(
                f"`budget` gives class {cls} {n_k} samples (its validation share), but the "
                f"training pool has only {available} of that class; lower the budget"
            )
    return dict(sorted(budgets.items()))


@dataclasses.dataclass(frozen=True, eq=False)
class CoresetResult:
    """A GORACS coreset and how it was found.

    Attributes
    ----------
    ids : (n,) array
        Selected samples in the caller's id space, in selection order (class by class).
    indices : (n,) int64
        The same samples as row indices of the training pool.
    classes : (n,) int64 or None
        Class of each selected sample (label-enhanced selection), else None.
    parts : tuple[ItraResult, ...]
        One ITRA run per class (one in total without labels); indices there are within-class.
    part_classes : tuple[int | None, ...]
        The class of each part (None without labels).
    seconds : dict[str, float]
        Wall time of "cost", "greedy", "refine" (summed over classes) and "total".
    settings : dict[str, Any]
        The options used.
    """

    ids: np.ndarray
    indices: np.ndarray
    classes: np.ndarray | None
    parts: tuple[ItraResult, ...]
    part_classes: tuple[int | None, ...]
    seconds: dict[str, float]
    settings: dict[str, Any]

    @property
    def n_ot_solves(self) -> int:
        """Exact OT problems solved, over all classes."""
        return sum(p.n_ot_solves for p in self.parts)

    def trace(self) -> dict[str, Any]:
        """JSON-serialisable summary (``selection_trace.json``)."""
        parts = []
        for cls, part in zip(self.part_classes, self.parts):
            ref = part.refinement
            parts.append(
                {
                    "class": cls,
                    "budget": int(part.indices.shape[0]),
                    "poo_greedy": part.poo_greedy,
                    "poo_final": part.poo,
                    "poo_trace": part.poo_trace.tolist(),
                    "swap_seconds": [] if ref is None else ref.swap_seconds.tolist(),
                    "n_ot_solves": part.n_ot_solves,
                    "n_pairs_tried": 0 if ref is None else ref.n_pairs_tried,
                    "stop_reason": None if ref is None else ref.stop_reason.value,
                    "greedy": {
                        "n_added": part.greedy.n_added,
                        "n_zero_gain": part.greedy.n_zero_gain,
                        "n_gain_evals": part.greedy.n_gain_evals,
                        "trimmed": part.greedy.trimmed,
                    },
                    "seconds": part.seconds,
                    **part.info,
                }
            )
        return {
            "settings": self.settings,
            "seconds": self.seconds,
            "n_ot_solves": self.n_ot_solves,
            "parts": parts,
        }


def _check_options(budget: int, lam: float) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"`budget` must be an integer, got {budget!r}")
    if not (isinstance(lam, (int, float, np.floating)) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"`lam` must be a finite number >= 0 (0 = pure matching), got {lam!r}")


@dataclasses.dataclass(frozen=True)
class ItraPart:
    """One ITRA problem of a selection: a class's rows (label-enhanced ITRA) or the whole pool.

    Attributes
    ----------
    train_emb : (N_k, d) float
    valid_emb : (M_k, d) float
    grad_norms : (N_k,) float or None
        None when λ = 0.
    budget : int
        Coreset size n_k of this part.
    cost_options : dict
        :func:`cost_matrix`'s keywords (``lam``, ``divide_distance``, ``grad_max``,
        ``block_rows``, ``device``).
    options : ItraOptions
    checkpoint : Checkpoint or None
        Where ITRA saves and resumes this part.
    """

    train_emb: np.ndarray
    valid_emb: np.ndarray
    grad_norms: np.ndarray | None
    budget: int
    cost_options: dict[str, Any]
    options: ItraOptions
    checkpoint: Checkpoint | None = None


PartRunner = Callable[..., ItraResult]
"""``(part: ItraPart, *, progress: bool) -> ItraResult``: builds the POO cost of ``part`` and
runs :func:`itra` on it; ``seconds["cost"]`` reports the cost time."""


def run_part_local(part: ItraPart, *, progress: bool = False) -> ItraResult:
    """The in-process :data:`PartRunner`: the full cost matrix, then :func:`itra`.

    The cost rows and the screening run on ``part.cost_options["device"]`` (default cpu).
    Memory: N_k·M_k·4 bytes for the cost plus ITRA's working set.
    """
    from goracs_ray.select.rowstore import memory_store, recomputed_store

    t0 = time.perf_counter()
    options = dict(part.cost_options)
    memory_bytes = options.pop("memory_bytes", None)
    device = options.get("device", "cpu")
    if memory_bytes is None:
        cost = cost_matrix(part.train_emb, part.valid_emb, part.grad_norms, **options).values
        store = memory_store(cost, device=device)
    else:  # rows recomputed on demand: no N×M array
        options.pop("block_rows", None)
        store, _ = recomputed_store(
            part.train_emb, part.valid_emb, part.grad_norms, memory_bytes=memory_bytes, **options
        )
    t1 = time.perf_counter()
    logger.info("ITRA on %d x %d, budget %d", len(part.train_emb), len(part.valid_emb), part.budget)
    result = itra(
        store, part.budget, options=part.options, checkpoint=part.checkpoint, progress=progress
    )
    return dataclasses.replace(result, seconds={"cost": t1 - t0, **result.seconds})


def _class_groups(
    features: FeatureTable, budget: int, labels: bool
) -> list[tuple[int | None, int, np.ndarray, np.ndarray]]:
    """(class, budget, train rows, valid rows) per ITRA run: one per class, or one in total."""
    if not labels:
        return [(None, budget, np.arange(features.n_train), np.arange(features.n_valid))]
    budgets = label_budgets(features.train_labels, features.valid_labels, budget)
    return [
        (cls, n_k, np.flatnonzero(features.train_labels == cls),
         np.flatnonzero(features.valid_labels == cls))
        for cls, n_k in budgets.items() if n_k > 0
    ]  # fmt: skip


def select_features(
    features: FeatureTable,
    budget: int,
    *,
    lam: float = 0.1,
    estimator: Estimator | str = Estimator.CORRECTED,
    max_iters: int = 100,
    cut_num: int = 30,
    trim_inactive: bool | None = None,
    use_labels: bool | None = None,
    refine_stage: bool = True,
    batch_size: int = 1,
    time_limit: float | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    device: str = "cpu",
    cost_memory_mb: float | None = None,
    progress: bool = False,
    part_runner: PartRunner = run_part_local,
    checkpoint_dir: str | Path | None = None,
) -> CoresetResult:
    """GORACS on a validated :class:`FeatureTable` (see :func:`select_coreset` for options).

    ``part_runner`` builds the cost and runs ITRA for each class (default in-process;
    :mod:`goracs_ray.select.distributed` passes a Ray one). ``use_labels`` (default: when the
    table has labels) runs label-enhanced ITRA: one ITRA per validation class on the within-class
    cost, budgets from :func:`label_budgets`.
    ``checkpoint_dir``: write a :class:`Checkpoint` per class there (after the greedy stage
    and every accepted swap) and resume from any whose settings and inputs match (serial and
    distributed runs share the driver, so either may resume the other's checkpoint).
    ``device``: where the cost rows and the screening bounds are computed (``cpu``, ``cuda``,
    ``cuda:N``, ``auto``; :mod:`goracs_ray.select.kernels`), resolved and checked first.
    ``cost_memory_mb``: never store the cost; its rows are recomputed from the embeddings on
    demand, in blocks whose temporaries fit this many MiB (the same rows bit for bit, hence the
    same coreset; :func:`goracs_ray.select.rowstore.recomputed_store`).
    Memory: the largest class's N_k·M_k·4-byte cost matrix plus ITRA's working set; with
    ``cost_memory_mb``, N_k·(d + 68)·4 bytes plus 3× that budget (blocks, candidate rows).
    """
    if cost_memory_mb is not None and not cost_memory_mb > 0:
        raise ValueError(f"`cost_memory_mb` must be > 0 or None, got {cost_memory_mb!r}")
    opts = ItraOptions(
        estimator=estimator, max_iters=max_iters, cut_num=cut_num, trim_inactive=trim_inactive,
        refine_stage=refine_stage, batch_size=batch_size, time_limit=time_limit,
    )  # fmt: skip
    _check_options(budget, lam)
    device = resolve_device(device)
    if not 0 < budget <= features.n_train:
        raise ValueError(f"`budget` must be in [1, N={features.n_train}], got {budget}")
    if lam > 0:
        features.require("grad_norms", method="goracs (lam > 0)")
    labels = features.train_labels is not None if use_labels is None else use_labels
    if labels:
        features.require("train_labels", "valid_labels", method="goracs (use_labels)")
    settings = {
        "budget": int(budget), "lam": float(lam), "estimator": opts.estimator.value,
        "max_iters": int(max_iters), "cut_num": int(cut_num), "trim_inactive": trim_inactive,
        "use_labels": bool(labels), "refine_stage": refine_stage, "batch_size": batch_size,
        "time_limit": time_limit, "device": device, "cost_memory_mb": cost_memory_mb,
    }  # fmt: skip
    groups = _class_groups(features, budget, labels)
    grads = features.grad_norms
    grad_max = float(grads.max()) if grads is not None and grads.max() > 0 else None
    seconds = {"cost": 0.0, "greedy": 0.0, "refine": 0.0}
    parts, rows = [], []
    t_start = time.perf_counter()
    cost_options = {
        "lam": lam, "divide_distance": not (opts.faithful and labels), "grad_max": grad_max,
        "block_rows": block_rows, "device": device,
        "memory_bytes": None if cost_memory_mb is None else int(cost_memory_mb * 2**20),
    }  # fmt: skip
    how_stored = ("block_rows", "device", "memory_bytes")  # the same rows however computed
    for cls, n_k, train_rows, valid_rows in groups:
        if labels:  # one ITRA per class; a single unlabeled part logs its size in the runner
            logger.info("class %s: budget %d", cls, n_k)
        train = features.train_emb[train_rows] if labels else features.train_emb
        valid = features.valid_emb[valid_rows] if labels else features.valid_emb
        part_grads = None if grads is None else grads[train_rows]
        checkpoint = None
        if checkpoint_dir is not None:
            key = opts.digest(
                n=n_k, cls=cls,
                cost={k: v for k, v in cost_options.items() if k not in how_stored},
                inputs=input_digest(train, valid, part_grads),
            )  # fmt: skip
            name = "part-all.npz" if cls is None else f"part-{cls}.npz"
            checkpoint = Checkpoint(Path(checkpoint_dir) / name, key)
        part = part_runner(
            ItraPart(train, valid, part_grads, n_k, cost_options, opts, checkpoint),
            progress=progress,
        )
        seconds["cost"] += part.seconds.get("cost", 0.0)
        seconds["greedy"] += part.seconds["greedy"]
        seconds["refine"] += part.seconds["refine"]
        parts.append(part)
        rows.append(train_rows[part.indices])
    seconds["total"] = time.perf_counter() - t_start
    indices = np.concatenate(rows).astype(np.int64)
    classes = None
    if labels:
        classes = np.concatenate([np.full(len(p.indices), c) for (c, *_), p in zip(groups, parts)])
    return CoresetResult(
        ids=features.train_ids[indices],
        indices=indices,
        classes=classes,
        parts=tuple(parts),
        part_classes=tuple(g[0] for g in groups),
        seconds=seconds,
        settings=settings,
    )


def select_coreset(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    budget: int,
    lam: float,
    *,
    ids: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    valid_labels: np.ndarray | None = None,
    **options: Any,
) -> CoresetResult:
    """Choose a GORACS coreset of ``budget`` training samples.

    Parameters
    ----------
    train_emb : (N, d) float32
        Training-pool embeddings.
    valid_emb : (M, d) float32
        Validation embeddings (the target distribution).
    grad_norms : (N,) float32 or None
        Per-sample gradient norms (may be None only when ``lam == 0``).
    budget : int
        n, 1 ≤ n ≤ N (and ≤ each class's size for its share with labels).
    lam : float
        λ ≥ 0, weight of the gradient-norm term of POO.
    ids : (N,) array, optional
        Sample ids (default: row numbers); the result reports these.
    train_labels, valid_labels : (N,), (M,) int, optional
        Class labels for label-enhanced selection (K classes).
    **options
        ``estimator`` ("corrected" | "faithful"), ``max_iters`` (100), ``cut_num`` (30),
        ``trim_inactive`` (None: faithful → on), ``refine_stage`` (True), ``batch_size`` (1),
        ``time_limit`` (None), ``block_rows``, ``device`` ("cpu"), ``progress``; see
        :func:`select_features`.

    Returns
    -------
    CoresetResult
        Memory: about N·M·4 bytes for the cost plus the OT working set (~n·M·50 bytes).
    """
    features = FeatureTable(
        train_ids=np.arange(len(train_emb)) if ids is None else ids,
        train_emb=train_emb,
        valid_emb=valid_emb,
        grad_norms=grad_norms,
        train_labels=train_labels,
        valid_labels=valid_labels,
    )
    return select_features(features, budget, lam=lam, **options)


def _to_selection(result: CoresetResult, method: str, seed: int) -> Selection:
    info = result.trace()
    info["seed"] = seed
    return Selection(
        indices=result.indices, ids=result.ids, method=method, classes=result.classes, info=info
    )


@register_selector("goracs")
def goracs(features: FeatureTable, n: int, *, seed: int = 0, **opts: Any) -> Selection:
    """GORACS: POO + full ITRA (greedy + exchange refinement). Deterministic (``seed`` unused)."""
    return _to_selection(select_features(features, n, **opts), "goracs", seed)


@register_selector("goracs_greedy")
def goracs_greedy(features: FeatureTable, n: int, *, seed: int = 0, **opts: Any) -> Selection:
    """GORACS stage 1 only (greedy initialisation on POO). Deterministic (``seed`` unused)."""
    opts["refine_stage"] = False
    return _to_selection(select_features(features, n, **opts), "goracs_greedy", seed)
