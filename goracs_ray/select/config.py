"""Configuration of the selection stage (``select:`` in the run YAML, ``goracs select`` flags)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from goracs_ray.select.kernels import check_device
from goracs_ray.select.options import ItraOptions
from goracs_ray.select.refine import Estimator
from goracs_ray.select.registry import run_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["GORACS_METHODS", "SelectConfig", "run_select"]

GORACS_METHODS = ("goracs", "goracs_greedy")
"""Registry names that take the GORACS options below (other methods get ``options`` only)."""


@dataclasses.dataclass
class SelectConfig:
    """How to choose the coreset."""

    method: str = "goracs"
    """Registry name of the selection method (``goracs``, ``goracs_greedy`` or a baseline)."""
    budget: int = 1024
    """n, the number of training samples to keep."""
    lam: float = 0.1
    """λ ≥ 0, weight of the gradient-norm term of POO (reference: SeqRec 0.1, CTR 0.5)."""
    estimator: Estimator = Estimator.CORRECTED
    """Swap estimator: ``corrected`` (default) or ``faithful`` (the reference code's quirks)."""
    max_iters: int = 100
    """Maximum accepted swaps in the refinement stage (0 = greedy only)."""
    cut_num: int = 30
    """Candidates kept by each of inner and outer pruning."""
    trim_inactive: bool | None = None
    """Active-support trim of the greedy stage; None = on for faithful, off for corrected."""
    use_labels: bool | None = None
    """Label-enhanced selection; None = whenever the features carry labels."""
    batch_size: int = 1
    """Candidate swaps evaluated per round (the best improving one of a round is accepted)."""
    time_limit: float | None = None
    """Stop refinement after this many seconds (None = no limit)."""
    seed: int = 0
    """Seed for randomised methods (GORACS itself is deterministic)."""
    device: str = "cpu"
    """GORACS cost rows and candidate screening: ``cpu`` (numpy), ``cuda``/``cuda:N`` (torch;
    rows within 1e-6, same coreset) or ``auto`` (CUDA when torch sees a GPU, else cpu)."""
    cost_memory_mb: float | None = None
    """GORACS: never store the N×M cost; recompute its rows from the embeddings on demand, in
    blocks whose temporaries fit this many MiB (per shard actor when distributed); twice as many
    MiB cache the rows the refinement screens. Same coreset; memory N·(d + 68)·4 bytes plus
    three times the budget instead of N·M·4, at the price of recomputing rows (each pass over
    them is an N×d by d×M product). None: the cost is stored (fastest)."""
    distributed: bool = False
    """Run GORACS on Ray: row-sharded cost, parallel OT evaluators (same coreset as serial)."""
    workers: int = 2
    """OT-evaluator actors when distributed (use ``batch_size`` >= workers for parallel waves)."""
    shards: int | None = None
    """Cost row-shard actors when distributed (None = ``workers``)."""
    compress_valid: int | None = None
    """Distributed only: compress a validation set (per class) larger than this to this many
    balanced points; the POO change bound is logged and traced (None = no compression)."""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword options passed to the method (e.g. a baseline's settings)."""

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"`method` must be a registry name, got {self.method!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"`budget` must be an integer >= 1, got {self.budget!r}")
        if not self.lam >= 0:
            raise ValueError(f"`lam` must be >= 0 (0 = pure distribution matching), got {self.lam}")
        self.estimator = self.itra.estimator  # checks every ITRA option once
        if self.cost_memory_mb is not None and not self.cost_memory_mb > 0:
            raise ValueError(
                f"`cost_memory_mb` must be > 0 MiB or null (stored), got {self.cost_memory_mb!r}"
            )
        if self.compress_valid is not None and not self.distributed:
            raise ValueError("`compress_valid` needs `distributed: true`")
        if check_device(self.device) not in ("cpu", "auto") and self.distributed:
            raise ValueError(
                f"`select.device: {self.device}` needs `distributed: false` (the Ray shard "
                "actors compute cost rows on CPU); or set `select.device: cpu` or `auto`"
            )
        for name in ("workers", "shards", "compress_valid"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")

    @property
    def itra(self) -> ItraOptions:
        """The GORACS ITRA options, every default resolved (:class:`ItraOptions`)."""
        return ItraOptions(
            estimator=self.estimator, max_iters=self.max_iters, cut_num=self.cut_num,
            trim_inactive=self.trim_inactive, refine_stage=self.method != "goracs_greedy",
            batch_size=self.batch_size, time_limit=self.time_limit,
        )  # fmt: skip

    def method_options(self) -> dict[str, Any]:
        """Keyword options for the registered method."""
        if self.method not in GORACS_METHODS:
            return dict(self.options)
        return {
            "lam": self.lam,
            "estimator": self.estimator,
            "max_iters": self.max_iters,
            "cut_num": self.cut_num,
            "trim_inactive": self.trim_inactive,
            "use_labels": self.use_labels,
            "batch_size": self.batch_size,
            "time_limit": self.time_limit,
            "device": self.device,
            "cost_memory_mb": self.cost_memory_mb,
            **self.options,
        }


def run_select(
    cfg: SelectConfig,
    features: FeatureTable,
    *,
    progress: bool = False,
    checkpoint_dir: Path | None = None,
) -> Selection:
    """Run the configured method on ``features`` and return its :class:`Selection`.

    Parameters
    ----------
    cfg : SelectConfig
    features : FeatureTable
    progress : bool
        tqdm bars (GORACS methods only).
    checkpoint_dir : Path, optional
        GORACS methods: checkpoint there after the greedy stage and every accepted swap, and
        resume from a checkpoint of the same settings and inputs.
    """
    opts = cfg.method_options()
    if cfg.method in GORACS_METHODS:
        opts["progress"] = progress
        opts["checkpoint_dir"] = checkpoint_dir
    if cfg.distributed and cfg.method in GORACS_METHODS:
        from goracs_ray.select.distributed import run_distributed_selector

        return run_distributed_selector(cfg, features, opts)
    return run_selector(cfg.method, features, cfg.budget, seed=cfg.seed, **opts)
