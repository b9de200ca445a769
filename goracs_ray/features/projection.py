"""Seeded Johnson–Lindenstrauss projection of per-sample gradients, generated chunk-wise.

``proj(g) = g R / √k`` with ``R ∈ {±1}^{P×k}`` (Rademacher) or ``N(0, 1)^{P×k}`` (Gaussian), so
``E‖proj(g)‖² = ‖g‖²``. ``R`` is produced in row chunks of ``chunk_size``; chunk ``c`` comes from a
CPU ``torch.Generator`` seeded by ``SeedSequence([seed, c])``, so the same ``seed`` gives the same
projection on every worker, device and chunk layout of the input batch (TRAK-style per-block
reseeding). The full ``P × k`` matrix is never built as one array; chunks are cached per projector
(one per actor) while they fit ``cache_bytes`` and regenerated otherwise.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

__all__ = ["GradProjector", "ProjectionKind"]


class ProjectionKind(str, enum.Enum):
    """Distribution of the JL matrix entries."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"


class GradProjector:
    """Project ``(B, P)`` gradients to ``(B, k)``.

    Parameters
    ----------
    dim_in : int
        P, the gradient size.
    k : int
        Output dimension.
    seed : int
        Projection seed (the only source of randomness).
    kind : ProjectionKind or str
        ``"rademacher"`` (default) or ``"gaussian"``.
    chunk_size : int
        Rows of ``R`` generated at a time. Memory: ``chunk_size × k`` floats per chunk.
    cache_bytes : int
        Keep generated chunks up to this many bytes (default 256 MiB); 0 disables the cache.
    """

    def __init__(
        self,
        dim_in: int,
        k: int,
        *,
        seed: int = 0,
        kind: ProjectionKind | str = ProjectionKind.RADEMACHER,
        chunk_size: int = 4096,
        cache_bytes: int = 256 << 20,
    ) -> None:
        if dim_in < 1 or k < 1 or chunk_size < 1:
            raise ValueError(
                f"`dim_in`, `k`, `chunk_size` must be ≥ 1, got {dim_in}, {k}, {chunk_size}"
            )
        self.dim_in, self.k, self.seed = dim_in, k, seed
        self.kind = ProjectionKind(kind)
        self.chunk_size = chunk_size
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_left = cache_bytes

    def chunk(self, c: int) -> torch.Tensor:
        """Rows ``[c·chunk_size, (c+1)·chunk_size)`` of ``R / √k``: (rows, k) float32, on CPU."""
        if c in self._cache:
            return self._cache[c]
        rows = min(self.chunk_size, self.dim_in - c * self.chunk_size)
        state = np.random.SeedSequence([self.seed, c]).generate_state(2, dtype=np.uint64)
        gen = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        if self.kind is ProjectionKind.RADEMACHER:
            mat = torch.randint(0, 2, (rows, self.k), generator=gen).float().mul_(2).sub_(1)
        else:
            mat = torch.randn((rows, self.k), generator=gen)
        mat.div_(float(np.sqrt(self.k)))
        nbytes = mat.numel() * 4
        if nbytes <= self._cache_left:
            self._cache[c] = mat
            self._cache_left -= nbytes
        return mat

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, P) float → (B, k) float32 projections."""
        if grads.ndim != 2 or grads.shape[1] != self.dim_in:
            raise ValueError(
                f"`grads` must have shape (B, {self.dim_in}), got {tuple(grads.shape)}"
            )
        out = torch.zeros(grads.shape[0], self.k, dtype=torch.float32, device=grads.device)
        for c, start in enumerate(range(0, self.dim_in, self.chunk_size)):
            block = grads[:, start : start + self.chunk_size].float()
            out += block @ self.chunk(c).to(grads.device)
        return out
