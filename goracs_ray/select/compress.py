"""Compress a large validation set to m balanced points (no Ray), with a bound on the POO change.

Balanced k-means: Lloyd iterations whose assignment step is the exact OT between the M validation
points (mass 1/M each) and the m centres (mass 1/m each), so every centre carries exactly 1/m of
the validation mass. The compressed target is therefore *uniform* over m points, and every ITRA
piece (uniform-marginal OT, greedy, pruning) runs on it unchanged, with M replaced by m.

Bound. The final plan π couples V and the centres P, so ``W1(V, P) <= Σ_jk π_jk ||v_j - p_k||``.
For fixed normalisation constants the POO cost is ``1/(dist_max·(high - low))``-Lipschitz in
the validation point, hence for any coreset S

    |POO_V(S) - POO_P(S)| <= Σ_jk π_jk ||v_j - p_k|| / (dist_max · (high - low)).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from goracs_ray.select.cost import CostScales, distance_block
from goracs_ray.select.ot import _pot

__all__ = ["CompressedTarget", "compress_validation"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class CompressedTarget:
    """A validation set compressed to m points of mass 1/m each.

    Attributes
    ----------
    points : (m, d) float32
        The balanced centres.
    transport_distance : float
        ``Σ_jk π_jk ||v_j - p_k||`` (raw embedding distance), an upper bound on W1(V, P).
    n_valid : int
        M, the original number of validation points.
    iterations : int
        Lloyd iterations run.
    """

    points: np.ndarray
    transport_distance: float
    n_valid: int
    iterations: int

    def poo_change_bound(self, scales: CostScales) -> float:
        """Upper bound on ``|POO_V(S) - POO_P(S)|`` for any S, at the normalisation ``scales``."""
        span = scales.high - scales.low
        return self.transport_distance / (scales.dist_max * (span if span > 0 else 1.0))


def _balanced_plan(valid: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = distance_block(valid, centres).astype(np.float64)
    a = np.full(len(valid), 1.0 / len(valid))
    b = np.full(len(centres), 1.0 / len(centres))
    return _pot().emd(a, b, dist, numItermax=50_000_000), dist


def compress_validation(
    valid_emb: np.ndarray, m: int, *, seed: int = 0, max_iter: int = 10, tol: float = 1e-6
) -> CompressedTarget:
    """Balanced (equal-mass) k-means of the validation embeddings, seeded.

    Parameters
    ----------
    valid_emb : (M, d) float32
    m : int
        Number of points to keep, 1 ≤ m ≤ M.
    seed : int
        Seed of the initial centres (m distinct validation points).
    max_iter : int
        Lloyd iterations at most.
    tol : float
        Stop when no centre moves more than ``tol``.

    Returns
    -------
    CompressedTarget
        Memory: the M×m plan and distances, 2·M·m·8 bytes, plus POT's network (~M·m·30 bytes).
    """
    valid = np.asarray(valid_emb, dtype=np.float32)
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= len(valid):
        raise ValueError(f"`compress_valid` must be an integer in [1, M={len(valid)}], got {m!r}")
    rng = np.random.default_rng(seed)
    centres = valid[np.sort(rng.choice(len(valid), m, replace=False))].astype(np.float64)
    iterations, shift = 0, np.inf
    while iterations < max_iter and shift > tol:
        plan, _ = _balanced_plan(valid, centres.astype(np.float32))
        moved = m * (plan.T @ valid.astype(np.float64))
        shift = float(np.abs(moved - centres).max())
        centres = moved
        iterations += 1
    points = centres.astype(np.float32)
    plan, dist = _balanced_plan(valid, points)
    bound = float((plan * dist).sum())
    logger.info(
        "compressed %d validation points to %d (W1 <= %.4g after %d iterations)",
        len(valid), m, bound, iterations,
    )  # fmt: skip
    return CompressedTarget(
        points=points, transport_distance=bound, n_valid=len(valid), iterations=iterations
    )
