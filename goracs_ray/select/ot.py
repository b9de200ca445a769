"""Exact optimal transport between a uniform coreset and the uniform validation set, with duals.

Wraps POT's network simplex (``ot.emd(..., log=True)``) and returns an :class:`OTSolution`. POT is
imported lazily and, when torch is not already loaded, with its torch backend disabled: we only
pass numpy arrays, and this keeps ``goracs select`` free of torch (several hundred MB of RSS).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from types import ModuleType

import numpy as np

__all__ = ["DEFAULT_MAX_ITER", "OTSolution", "add_row_potential", "solve_ot"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ITER = 50_000_000
"""Network-simplex iteration cap (the reference uses 300,000, which can stop short at n·M ≈ 5M)."""

_DISABLE_TORCH = "POT_BACKEND_DISABLE_PYTORCH"


@functools.cache
def _pot() -> ModuleType:
    """Import POT once, without its torch backend unless torch is already imported."""
    if "ot" in sys.modules or "torch" in sys.modules:
        import ot

        return ot
    previous = os.environ.get(_DISABLE_TORCH)
    os.environ[_DISABLE_TORCH] = "1"
    try:
        import ot
    finally:
        if previous is None:
            del os.environ[_DISABLE_TORCH]
        else:
            os.environ[_DISABLE_TORCH] = previous
    return ot


@dataclasses.dataclass(frozen=True, eq=False)
class OTSolution:
    """Exact OT between ``a = 1/n`` on n coreset rows and ``b = 1/M`` on M validation columns.

    Attributes
    ----------
    value : float
        ``min_π Σ π_ij c_ij`` (the POO of the coreset when c is the POO cost).
    u : (n,) float64
        Row potentials (duals of the coreset marginal), centred as POT does.
    v : (M,) float64
        Column potentials; ``value == mean(u) + mean(v)`` and ``u_i + v_j <= c_ij``.
    status : str
        "optimal", or POT's warning text when the solver stopped early.
    """

    value: float
    u: np.ndarray
    v: np.ndarray
    status: str

    @property
    def optimal(self) -> bool:
        """True when the network simplex reached optimality."""
        return self.status == "optimal"


def solve_ot(
    cost_rows: np.ndarray,
    *,
    potentials_init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> OTSolution:
    """Solve exact OT between uniform rows and uniform columns of ``cost_rows``.

    Parameters
    ----------
    cost_rows : (n, M) float32 or float64
        Cost of the coreset rows (``C[S]``). Memory: n·M·8 bytes for the float64 copy plus the
        plan POT returns (another n·M·8) and its network (about n·M·30 bytes).
    potentials_init : ((n,), (M,)) float64, optional
        Warm start (dual potentials of a nearby problem, e.g. :func:`add_row_potential`).
    max_iter : int
        Network-simplex iteration cap.

    Returns
    -------
    OTSolution
    """
    ot = _pot()
    cost = np.ascontiguousarray(cost_rows, dtype=np.float64)
    n_rows, m_cols = cost.shape
    a = np.full(n_rows, 1.0 / n_rows)
    b = np.full(m_cols, 1.0 / m_cols)
    _, log = ot.emd(a, b, cost, numItermax=max_iter, log=True, potentials_init=potentials_init)
    status = "optimal" if log["warning"] is None else str(log["warning"])
    if status != "optimal":
        logger.warning("exact OT (%d x %d) did not reach optimality: %s", n_rows, m_cols, status)
    return OTSolution(
        value=float(log["cost"]), u=np.asarray(log["u"]), v=np.asarray(log["v"]), status=status
    )


def add_row_potential(v: np.ndarray, cost_row: np.ndarray) -> float:
    """Dual-feasible potential for a new row given column potentials: ``min_j (c_j - v_j)``.

    Parameters
    ----------
    v : (M,) float64
        Column potentials of the current solution.
    cost_row : (M,) float32
        The new row's costs.
    """
    return float(np.min(np.asarray(cost_row, dtype=np.float64) - v))
