"""Synthetic selection problems for the demo, the benchmark and tests (no data needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["mixture_problem"]


def mixture_problem(
    n_train: int,
    n_valid: int,
    *,
    dim: int = 768,
    clusters: int = 1000,
    latent: int = 16,
    grad_sigma: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-mixture embeddings and log-normal gradient norms.

    ``clusters`` small clusters on a ``latent``-d subspace of R^dim plus isotropic noise (0.05),
    so nearest neighbours spread out as with sentence embeddings instead of concentrating as
    isotropic high-d Gaussians do.

    Returns
    -------
    train_emb : (n_train, dim) float32
    valid_emb : (n_valid, dim) float32
    grad_norms : (n_train,) float32
        ``lognormal(0, grad_sigma)``.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0]
    centers = rng.normal(size=(clusters, latent)) * 5.0

    def sample(count: int) -> np.ndarray:
        z = centers[rng.integers(0, clusters, count)] + rng.normal(size=(count, latent))
        return (z @ basis.T + 0.05 * rng.normal(size=(count, dim))).astype(np.float32)

    train, valid = sample(n_train), sample(n_valid)
    return train, valid, rng.lognormal(0.0, grad_sigma, n_train).astype(np.float32)
