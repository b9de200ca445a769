"""POO cost matrix: normalised embedding distances minus the scaled gradient-norm bonus.

The cost follows the reference code's normalisations (METHOD.md §2)::

    d_ij = ||e_i - e_j|| / max d        ĝ_i = g_i / max g
    c_ij = (d_ij - lam * ĝ_i - low) / (high - low)       low, high = min, max of d - lam * ĝ

It is built in float32 row blocks: distances are accumulated in float64 per block (so a row's
values do not depend on how rows are grouped into blocks or shards) and stored as float32. The
pieces (:func:`distance_block`, :func:`cost_scales`, :func:`normalize_block`) are pure functions so
that row shards held by different workers produce bit-identical rows. ``device="cuda"`` runs the
same blocks in torch (:mod:`goracs_ray.select.kernels`; rows within 1e-6 of these).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = [
    "CostMatrix",
    "CostScales",
    "cost_matrix",
    "cost_scales",
    "distance_block",
    "normalize_block",
    "normalize_terms",
]

DEFAULT_BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class CostScales:
    """The global constants that turn raw distances into POO costs.

    Attributes
    ----------
    dist_max : float
        Divisor of the distances (max distance; 1.0 when distances are not divided).
    grad_max : float
        Divisor of the gradient norms (max norm; 1.0 when all norms are 0).
    lam : float
        Weight λ ≥ 0 of the gradient term.
    low, high : float
        Min and max of ``d / dist_max - lam * ĝ`` over the whole matrix (the min-max rescale).
    """

    dist_max: float
    grad_max: float
    lam: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True, eq=False)
class CostMatrix:
    """A full POO cost matrix with the constants that produced it.

    Attributes
    ----------
    values : (N, M) float32
        ``c_ij`` in [0, 1]. Memory: N·M·4 bytes.
    scales : CostScales
        Normalisation constants (to map values back: ``c * (high - low) + low``).
    """

    values: np.ndarray
    scales: CostScales


def distance_block(
    train_block: np.ndarray, valid_emb: np.ndarray, *, valid_sq: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distances between a block of training rows and every validation row.

    Parameters
    ----------
    train_block : (b, d) float32
    valid_emb : (M, d) float32, or float64 (used as is)
    valid_sq : (M,) float64, optional
        ``|y|²`` of ``valid_emb`` in float64, when the caller keeps it (a row shard recomputing
        a few rows at a time): the same numbers without recomputing them per call.

    Returns
    -------
    (b, M) float32
        ``||e_i - e_j||``, computed as ``sqrt(max(|x|² + |y|² - 2 x·y, 0))`` in float64.
        Memory: b·M·8 bytes temporary.
    """
    x = np.asarray(train_block, dtype=np.float64)
    y = np.asarray(valid_emb, dtype=np.float64)
    if valid_sq is None:
        valid_sq = np.einsum("ij,ij->i", y, y)
    sq = np.einsum("ij,ij->i", x, x)[:, None] + valid_sq[None, :]
    sq -= 2.0 * (x @ y.T)
    np.maximum(sq, 0.0, out=sq)
    return np.sqrt(sq).astype(np.float32)


def cost_scales(
    row_min_dist: np.ndarray,
    row_max_dist: np.ndarray,
    grad_norms: np.ndarray | None,
    *,
    lam: float,
    divide_distance: bool = True,
    grad_max: float | None = None,
) -> CostScales:
    """Global normalisation constants from per-row distance extrema (O(N), no matrix needed).

    Parameters
    ----------
    row_min_dist, row_max_dist : (N,) float32
        Min and max over validation rows of each training row's distances.
    grad_norms : (N,) float32 or None
        Per-sample gradient norms; None means all zero (only allowed with ``lam == 0``).
    lam : float
        λ ≥ 0.
    divide_distance : bool
        Divide distances by their max (True; the reference CTR path does not, METHOD.md §4.4).
    grad_max : float, optional
        Divisor of the gradient norms (default: their max; label-enhanced selection passes the
        max over the whole pool, as the reference normalises before splitting by class).
    """
    lo = np.asarray(row_min_dist, dtype=np.float64)
    hi = np.asarray(row_max_dist, dtype=np.float64)
    dist_max = float(hi.max()) if divide_distance else 1.0
    dist_max = dist_max if dist_max > 0 else 1.0
    g = np.zeros_like(lo) if grad_norms is None else np.asarray(grad_norms, dtype=np.float64)
    if grad_max is None:
        grad_max = float(g.max()) if g.size and g.max() > 0 else 1.0
    bonus = lam * (g / grad_max)
    low = float((lo / dist_max - bonus).min())
    high = float((hi / dist_max - bonus).max())
    return CostScales(dist_max=dist_max, grad_max=grad_max, lam=float(lam), low=low, high=high)


def normalize_terms(
    grad_block: np.ndarray | None, scales: CostScales, n_rows: int
) -> tuple[np.ndarray, float]:
    """Per-row shift and the span of :func:`normalize_block`: ``c = (d / dist_max - shift) / span``.

    Parameters
    ----------
    grad_block : (b,) float32 or None
        Gradient norms of the block's rows (None = zeros).
    scales : CostScales
    n_rows : int
        b.

    Returns
    -------
    shift : (b,) float64
        ``lam * ĝ_i + low``.
    span : float
        ``high - low`` (1.0 when not positive).
    """
    span = scales.high - scales.low
    span = span if span > 0 else 1.0
    g = 0.0 if grad_block is None else np.asarray(grad_block, dtype=np.float64) / scales.grad_max
    return (scales.lam * g + scales.low) * np.ones(n_rows), span


def normalize_block(
    dist_block: np.ndarray, grad_block: np.ndarray | None, scales: CostScales
) -> np.ndarray:
    """Turn a block of raw distances into POO costs, in place.

    Parameters
    ----------
    dist_block : (b, M) float32
        Raw distances of b training rows; overwritten with the costs.
    grad_block : (b,) float32 or None
        Their gradient norms (None = zeros).
    scales : CostScales

    Returns
    -------
    (b, M) float32
        ``dist_block`` itself.
    """
    shift, span = normalize_terms(grad_block, scales, dist_block.shape[0])
    # c = (d / dist_max - lam ĝ - low) / span, evaluated elementwise in float64 then stored
    dist_block[...] = (
        (dist_block.astype(np.float64) / scales.dist_max - shift[:, None]) / span
    ).astype(np.float32)
    return dist_block


def cost_matrix(
    train_emb: np.ndarray,
    valid_emb: np.ndarray,
    grad_norms: np.ndarray | None,
    *,
    lam: float,
    divide_distance: bool = True,
    grad_max: float | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    device: str = "cpu",
) -> CostMatrix:
    """Build the full POO cost matrix in float32 row blocks (two passes over one array).

    Parameters
    ----------
    train_emb : (N, d) float32
    valid_emb : (M, d) float32
    grad_norms : (N,) float32 or None
    lam : float
        λ ≥ 0, weight of the gradient-norm bonus.
    divide_distance, grad_max
        See :func:`cost_scales`.
    block_rows : int
        Rows per block; the result does not depend on it.
    device : str
        ``cpu`` (numpy, here), or a torch device of :mod:`goracs_ray.select.kernels` (``cuda``,
        ``cuda:N``, ``torch-cpu``): the same blocks on that device, rows within 1e-6.

    Returns
    -------
    CostMatrix
        Memory: N·M·4 bytes for the result plus about block_rows·M·16 bytes of temporaries.
    """
    dist_fn, norm_fn = distance_block, normalize_block
    if device != "cpu":
        from goracs_ray.select import kernels

        dist_fn = functools.partial(kernels.distance_block, device=device)
        norm_fn = functools.partial(kernels.normalize_block, device=device)
    n_rows, m_cols = train_emb.shape[0], valid_emb.shape[0]
    values = np.empty((n_rows, m_cols), dtype=np.float32)
    row_min = np.empty(n_rows, dtype=np.float32)
    row_max = np.empty(n_rows, dtype=np.float32)
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        block = dist_fn(train_emb[start:stop], valid_emb)
        values[start:stop] = block
        row_min[start:stop] = block.min(axis=1)
        row_max[start:stop] = block.max(axis=1)
    scales = cost_scales(
        row_min, row_max, grad_norms, lam=lam, divide_distance=divide_distance, grad_max=grad_max
    )
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        grads = None if grad_norms is None else grad_norms[start:stop]
        norm_fn(values[start:stop], grads, scales)
    return CostMatrix(values=values, scales=scales)
