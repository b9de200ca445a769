"""POO of any given coreset, and its two terms: the method's premise made measurable.

GORACS minimises POO because POO bounds the test loss (docs/method.md). To check that premise on
a substrate, :func:`coreset_poo` scores coresets chosen by anything (random subsets, baselines,
GORACS itself) with the same cost as the GORACS run, so their POO can be rank-correlated with
the fine-tuned losses (``goracs bench``, ``bench.poo_correlation``).

With ``ĝ = g / max g`` and ``d = ||e_i − e_j|| / max ||e_i − e_j||`` the identity

    POO(S) = (OT_d(μ_S, μ_V) − λ · mean_{i∈S} ĝ_i − low) / (high − low)

holds exactly (every row of a plan carries 1/|S|), where ``low``/``high`` are the global
extrema of ``d − λĝ`` over the pool. So each coreset needs one exact OT on the distances only,
and the two terms are reported apart: ``ot_distance`` (distribution match with the validation
set) and ``grad_bonus`` (mean normalised gradient norm, the "hard samples" term).

Memory: one (N, M) float32 distance matrix for the pool's normalisation constants, built block
by block, plus one exact OT of size (n, M) per coreset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from goracs_ray.select.cost import cost_scales, distance_block
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.types import FeatureTable

__all__ = ["PooTerms", "coreset_poo", "spearman"]

_BLOCK_ROWS = 2048


@dataclasses.dataclass(frozen=True)
class PooTerms:
    """POO of one coreset and its two terms."""

    poo: float
    """The normalised objective GORACS minimises (the value its trace reports)."""
    ot_distance: float
    """``OT_d(μ_S, μ_V)`` on distances divided by their pool-wide max."""
    grad_bonus: float
    """``mean_{i∈S} ĝ_i``, the mean normalised gradient norm of the coreset."""
    size: int
    """|S|."""


def coreset_poo(
    features: FeatureTable,
    coresets: Mapping[str, Sequence],
    *,
    lam: float,
    divide_distance: bool = True,
) -> dict[str, PooTerms]:
    """POO (with its terms) of each coreset in ``coresets`` (name → training sample ids).

    Parameters
    ----------
    features : FeatureTable
        The pool and validation set the coresets were chosen from (embeddings, grad norms).
    coresets : mapping of str to sequence of ids
        Ids in ``features.train_ids``; each coreset non-empty, without repeats.
    lam : float
        λ of the POO cost (``select.lam``).
    divide_distance : bool
        As :func:`goracs_ray.select.cost.cost_scales` (True: the corrected SeqRec/CTR cost).

    Returns
    -------
    dict of str to PooTerms
        Label-enhanced selection optimises POO per class; this is the POO of the whole coreset
        against the whole validation set, the same quantity for every method.

    Raises
    ------
    ValueError
        A coreset is empty, repeats an id, or names an id not in the pool.
    """
    if lam < 0:
        raise ValueError(f"`lam` must be ≥ 0, got {lam}")
    index = {sid: i for i, sid in enumerate(features.train_ids.tolist())}
    rows: dict[str, np.ndarray] = {}
    for name, ids in coresets.items():
        ids = list(ids)
        unknown = [s for s in ids if s not in index]
        if not ids or unknown or len(set(ids)) != len(ids):
            raise ValueError(
                f"coreset `{name}`: {len(ids)} ids, {len(unknown)} not in the pool "
                f"(e.g. {unknown[:3]}), {len(ids) - len(set(ids))} repeated; give distinct "
                "training sample ids of these features"
            )
        rows[name] = np.asarray([index[s] for s in ids], dtype=np.int64)
    train, valid = features.train_emb, features.valid_emb
    n_rows = train.shape[0]
    row_min = np.empty(n_rows, dtype=np.float32)
    row_max = np.empty(n_rows, dtype=np.float32)
    for start in range(0, n_rows, _BLOCK_ROWS):
        block = distance_block(train[start : start + _BLOCK_ROWS], valid)
        row_min[start : start + len(block)] = block.min(axis=1)
        row_max[start : start + len(block)] = block.max(axis=1)
    scales = cost_scales(
        row_min, row_max, features.grad_norms, lam=lam, divide_distance=divide_distance
    )
    span = scales.high - scales.low if scales.high > scales.low else 1.0
    g_hat = (
        np.zeros(n_rows)
        if features.grad_norms is None
        else np.asarray(features.grad_norms, np.float64) / scales.grad_max
    )
    out = {}
    for name, picked in rows.items():
        dist = distance_block(train[picked], valid).astype(np.float64) / scales.dist_max
        ot_d = solve_ot(dist).value
        bonus = float(g_hat[picked].mean())
        poo = (ot_d - lam * bonus - scales.low) / span
        out[name] = PooTerms(poo=poo, ot_distance=ot_d, grad_bonus=bonus, size=len(picked))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length samples (average ranks on ties); NaN when
    either is constant or shorter than 3."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"`x` and `y` must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
