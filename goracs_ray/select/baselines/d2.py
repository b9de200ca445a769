"""D2 Pruning: message passing on a kNN graph of embeddings to balance difficulty and diversity."""

from __future__ import annotations

import dataclasses

import numpy as np

from goracs_ray.select.baselines._common import (
    ScoreSource,
    check_budget,
    importance_scores,
    make_selection,
    parse_enum,
)
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["KnnGraph", "d2_greedy", "knn_graph", "select_d2"]


@dataclasses.dataclass(frozen=True)
class KnnGraph:
    """Directed k-nearest-neighbour graph (self excluded).

    Attributes
    ----------
    neighbors : (N, k) int64
        Neighbours of each row, nearest first (ties by row index).
    distances : (N, k) float64
        Euclidean distances to them.
    """

    neighbors: np.ndarray
    distances: np.ndarray


def knn_graph(emb: np.ndarray, k: int, *, block_size: int = 1024) -> KnnGraph:
    """Exact kNN graph by blocked brute force.

    Parameters
    ----------
    emb : (N, d) float
    k : int
        Neighbours per node, ``0 <= k <= N − 1``.
    block_size : int
        Rows per distance block.

    Memory: O(block_size · N) float64. Time: O(N² d).
    """
    x = emb.astype(np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    n_rows = x.shape[0]
    neighbors = np.empty((n_rows, k), dtype=np.int64)
    distances = np.empty((n_rows, k), dtype=np.float64)
    if k == 0:
        return KnnGraph(neighbors, distances)
    for start in range(0, n_rows, block_size):
        stop = min(start + block_size, n_rows)
        d2 = np.maximum(sq[start:stop, None] + sq[None, :] - 2.0 * x[start:stop] @ x.T, 0.0)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, part_d), axis=1)  # by distance, then row index
        neighbors[start:stop] = np.take_along_axis(part, order, axis=1)
        distances[start:stop] = np.sqrt(np.take_along_axis(part_d, order, axis=1))
    return KnnGraph(neighbors, distances)


def d2_greedy(
    difficulty: np.ndarray, graph: KnnGraph, n: int, *, gamma_forward: float, gamma_reverse: float
) -> tuple[np.ndarray, np.ndarray]:
    """Forward message passing, then greedy selection with reverse message passing.

    Forward: ``s̃_i = s_i + Σ_{j ∈ N_k(i)} exp(−γ_f · d(i, j)) · s_j``.
    Reverse, after selecting ``i* = argmax s̃`` (ties by row index):
    ``s̃_j ← s̃_j − exp(−γ_r · d(i*, j)) · s̃_{i*}`` for ``j ∈ N_k(i*)``; repeat ``n`` times.

    Parameters
    ----------
    difficulty : (N,) float
    graph : KnnGraph
    n : int

    Returns
    -------
    indices : (n,) int64, in selection order
    forward : (N,) float64, scores after forward message passing

    Time: O(n · N) (an argmax per step).
    """
    s = np.asarray(difficulty, dtype=np.float64)
    forward = s + (np.exp(-gamma_forward * graph.distances) * s[graph.neighbors]).sum(axis=1)
    current = forward.copy()
    chosen = np.zeros(s.shape[0], dtype=bool)
    indices = np.empty(n, dtype=np.int64)
    for step in range(n):
        masked = np.where(chosen, -np.inf, current)
        best = int(np.argmax(masked))
        indices[step] = best
        chosen[best] = True
        nbrs = graph.neighbors[best]
        current[nbrs] -= np.exp(-gamma_reverse * graph.distances[best]) * current[best]
    return indices, forward


@register_selector("d2")
def select_d2(
    features: FeatureTable,
    n: int,
    *,
    seed: int,
    k: int = 10,
    gamma_forward: float = 1.0,
    gamma_reverse: float = 1.0,
    score: str = "grad_norm",
) -> Selection:
    """D2 Pruning on the training embeddings with difficulty = gradient norm (or loss).

    Builds the kNN graph of ``train_emb`` (Euclidean), runs one round of forward message passing of
    difficulty and selects greedily with reverse message passing (see :func:`d2_greedy`): a pick
    lowers its neighbours' scores, so dense regions are not over-sampled. Large ``gamma_reverse``
    reduces D2 to top-n of the forward scores. Deterministic (``seed`` unused); ties by row index.

    Reference: Maharana, Yadav, Bansal, "D2 Pruning: Message Passing for Balancing Diversity and
    Difficulty in Data Pruning", ICLR 2024.
    """
    check_budget(features, n)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` (neighbours per node) must be a positive integer, got {k!r}")
    for name, gamma in (("gamma_forward", gamma_forward), ("gamma_reverse", gamma_reverse)):
        if not gamma >= 0.0:
            raise ValueError(f"`{name}` must be >= 0, got {gamma}")
    source = parse_enum(ScoreSource, score, name="score")
    difficulty = importance_scores(features, source, method="d2")
    k_eff = min(k, features.n_train - 1)
    graph = knn_graph(features.train_emb, k_eff)
    indices, forward = d2_greedy(
        difficulty, graph, n, gamma_forward=gamma_forward, gamma_reverse=gamma_reverse
    )
    info = {
        "seed": seed,
        "k": k_eff,
        "gamma_forward": gamma_forward,
        "gamma_reverse": gamma_reverse,
        "score": source.value,
        "forward_score_first": float(forward[indices[0]]),
    }
    return make_selection(features, indices, "d2", info)
