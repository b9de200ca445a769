"""The GORACS options, resolved once: one frozen object from the config to the drivers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from typing import Any

from goracs_ray.select.refine import Estimator

__all__ = ["ItraOptions"]


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


@dataclasses.dataclass(frozen=True)
class ItraOptions:
    """How ITRA runs (greedy + refinement); every default is resolved here and nowhere else.

    ``trim_inactive`` and ``warm_start`` may be given as None and are then resolved from the
    estimator (faithful: trim on, cold OT; corrected: trim off, warm OT), so after construction
    every field holds the value actually used.
    """

    estimator: Estimator = Estimator.CORRECTED
    """``corrected`` (default) or ``faithful`` (the reference code's behaviour)."""
    max_iters: int = 100
    """Maximum accepted swaps (0 = greedy only)."""
    cut_num: int = 30
    """Candidates kept by each of inner and outer pruning."""
    trim_inactive: bool | None = None
    """Active-support trim of the greedy stage (None: on for faithful, off for corrected)."""
    refine_stage: bool = True
    """Run the exchange refinement after the greedy stage."""
    batch_size: int = 1
    """Candidate swaps per round; the best improving pair of the first improving round wins."""
    warm_start: bool | None = None
    """Warm-start the exact OT solves (None: on for corrected, off for faithful)."""
    time_limit: float | None = None
    """Stop refinement after this many seconds (None = no limit)."""
    tol: float = 1e-12
    """A swap is accepted when it lowers POO by more than this."""

    def __post_init__(self) -> None:
        try:
            estimator = Estimator(self.estimator)
        except ValueError:
            choices = ", ".join(e.value for e in Estimator)
            raise ValueError(
                f"`estimator` must be one of {choices}, got {self.estimator!r}"
            ) from None
        faithful = estimator is Estimator.FAITHFUL
        object.__setattr__(self, "estimator", estimator)
        if self.trim_inactive is None:
            object.__setattr__(self, "trim_inactive", faithful)
        if self.warm_start is None:
            object.__setattr__(self, "warm_start", not faithful)
        for name, low in (("max_iters", 0), ("cut_num", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not _is_int(value, low):
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"`time_limit` must be > 0 seconds or null, got {self.time_limit}")

    @property
    def faithful(self) -> bool:
        """Whether the reference code's behaviour is reproduced."""
        return self.estimator is Estimator.FAITHFUL

    @property
    def refines(self) -> bool:
        """Whether stage 2 runs."""
        return self.refine_stage and self.max_iters > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        out = dataclasses.asdict(self)
        out["estimator"] = self.estimator.value
        return out

    def digest(self, **extra: Any) -> str:
        """Stable hash of these options plus ``extra`` (JSON-serialisable) settings."""
        blob = json.dumps({**self.to_dict(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
