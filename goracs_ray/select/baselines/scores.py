"""Score-ranking baselines: GraNd, EL2N and LESS-style gradient similarity (top-n of a score)."""

from __future__ import annotations

import enum

import numpy as np

from goracs_ray.select.baselines._common import check_budget, make_selection, parse_enum, top_n
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = [
    "LessReduce",
    "el2n_scores",
    "less_scores",
    "select_el2n",
    "select_grand",
    "select_less",
]


@register_selector("grand")
def select_grand(features: FeatureTable, n: int, *, seed: int) -> Selection:
    """GraNd: the ``n`` samples with the largest gradient norm.

    ``score(x) = ‖∇_θ ℓ(x; θ)‖₂`` (here the LoRA gradient norm ``grad_norms`` from the feature
    stage, one model instead of the paper's expectation over several early-training checkpoints);
    ``S = top-n(score)``, ties by row index. ``seed`` is unused (deterministic).

    Reference: Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet: Finding Important Examples
    Early in Training", NeurIPS 2021.
    """
    check_budget(features, n)
    features.require("grad_norms", method="grand")
    indices = top_n(features.grad_norms, n)
    info = {
        "seed": seed,
        "score": "grad_norm",
        "score_min_selected": float(features.grad_norms[indices[-1]]),
    }
    return make_selection(features, indices, "grand", info)


def el2n_scores(losses: np.ndarray) -> np.ndarray:
    """EL2N error norm approximated from the per-sample loss only.

    EL2N is ``‖p(x) − e_y‖₂`` (softmax output minus one-hot label). With only the cross-entropy
    ``ℓ = −log p_y`` available we use ``1 − p_y = 1 − exp(−ℓ)``: it equals the error norm up to the
    constant √2 for a binary label (CTR Yes/No), is a lower bound ``1 − p_y ≤ ‖p − e_y‖₂`` in
    general, and for a token-averaged LM loss ``exp(−ℓ)`` is the geometric-mean token probability.
    It is monotone in ``ℓ``, so the ranking equals the loss ranking.

    Parameters
    ----------
    losses : (N,) float, non-negative cross-entropy

    Returns
    -------
    (N,) float64 in [0, 1)
    """
    return -np.expm1(-np.asarray(losses, dtype=np.float64))


@register_selector("el2n")
def select_el2n(features: FeatureTable, n: int, *, seed: int) -> Selection:
    """EL2N: the ``n`` samples with the largest error norm, ``S = top-n(1 − exp(−ℓ))``.

    See :func:`el2n_scores` for the loss-only approximation. Ties by row index; ``seed`` is unused.

    Reference: Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021.
    """
    check_budget(features, n)
    features.require("train_losses", method="el2n")
    scores = el2n_scores(features.train_losses)
    indices = top_n(scores, n)
    info = {
        "seed": seed,
        "score": "1 - exp(-loss)",
        "score_min_selected": float(scores[indices[-1]]),
    }
    return make_selection(features, indices, "el2n", info)


class LessReduce(str, enum.Enum):
    """How LESS aggregates a training sample's cosine similarities over the validation set."""

    MAX = "max"
    """``max_j cos(g_i, v_j)`` (LESS takes the max over validation tasks)."""
    MEAN = "mean"
    """``mean_j cos(g_i, v_j)``."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def less_scores(
    train_proj: np.ndarray, valid_proj: np.ndarray, *, reduce: LessReduce, block_size: int = 4096
) -> np.ndarray:
    """Cosine similarity of projected training gradients to the validation gradients.

    ``score_i = reduce_j ⟨g_i/‖g_i‖, v_j/‖v_j‖⟩``; a zero gradient has cosine 0 with everything.

    Parameters
    ----------
    train_proj : (N, k) float
    valid_proj : (M, k) float
    reduce : LessReduce
    block_size : int
        Training rows per block for the max reduction.

    Returns
    -------
    (N,) float64

    Memory: O(block_size · M) for ``max``; O(N · k) for ``mean``.
    """
    g = _unit_rows(train_proj)
    v = _unit_rows(valid_proj)
    if reduce is LessReduce.MEAN:
        return g @ v.mean(axis=0)
    out = np.empty(g.shape[0], dtype=np.float64)
    for start in range(0, g.shape[0], block_size):
        out[start : start + block_size] = (g[start : start + block_size] @ v.T).max(axis=1)
    return out


@register_selector("less")
def select_less(
    features: FeatureTable, n: int, *, seed: int, reduce: str = "max", block_size: int = 4096
) -> Selection:
    """LESS-style targeted selection: top-n cosine similarity of projected gradients to validation.

    ``score_i = max_j cos(Π∇ℓ(x_i), Π∇ℓ(v_j))`` (or the mean over ``j``), ``Π`` the random
    projection of the feature stage; ``S = top-n(score)``, ties by row index. One checkpoint, plain
    gradients (LESS sums over checkpoints weighted by the learning rate and uses Adam-preconditioned
    training gradients). ``seed`` is unused.

    Reference: Xia, Malladi, Gururangan, Arora, Chen, "LESS: Selecting Influential Data for Targeted
    Instruction Tuning", ICML 2024.
    """
    check_budget(features, n)
    mode = parse_enum(LessReduce, reduce, name="reduce")
    features.require("train_grad_proj", "valid_grad_proj", method="less")
    if features.train_grad_proj.shape[1] != features.valid_grad_proj.shape[1]:
        raise ValueError(
            f"`train_grad_proj` has k={features.train_grad_proj.shape[1]} but `valid_grad_proj` "
            f"has k={features.valid_grad_proj.shape[1]}; project both with the same matrix"
        )
    scores = less_scores(
        features.train_grad_proj, features.valid_grad_proj, reduce=mode, block_size=block_size
    )
    indices = top_n(scores, n)
    info = {
        "seed": seed,
        "reduce": mode.value,
        "score_min_selected": float(scores[indices[-1]]),
        "score_max": float(scores[indices[0]]),
    }
    return make_selection(features, indices, "less", info)
