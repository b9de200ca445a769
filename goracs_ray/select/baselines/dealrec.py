"""DEALRec: surrogate influence + LLM effort score, then coverage-enhanced selection.

The surrogate is a small matrix-factorisation recommender trained here (torch, CPU) on the pool's
(user, target item) interactions from ``FeatureTable.train_groups`` — the minimal input that lets
influence be estimated without a second model checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from goracs_ray.select.baselines._common import (
    check_budget,
    coverage_sample,
    equal_width_bins,
    make_selection,
    require_group,
)
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["SurrogateSettings", "minmax", "select_dealrec", "surrogate_influence"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SurrogateSettings:
    """Matrix-factorisation surrogate and influence-solver settings."""

    dim: int = 16
    """Embedding size of users and items."""
    epochs: int = 200
    """Full-batch Adam steps."""
    lr: float = 0.05
    """Adam learning rate."""
    weight_decay: float = 1e-3
    """L2 penalty ``(wd/2)‖θ‖²`` in the training objective and its Hessian."""
    n_neg: int = 4
    """Sampled negative items per interaction."""
    damping: float = 1e-2
    """Added to the Hessian diagonal before solving ``H x = ḡ``."""
    cg_iters: int = 50
    """Conjugate-gradient iterations for the inverse-Hessian-vector product."""

    def __post_init__(self) -> None:
        for name in ("dim", "epochs", "n_neg", "cg_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "damping"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")


def _per_sample_losses(
    theta: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, sizes: tuple
) -> torch.Tensor:
    """(N,) BCE losses ``softplus(−p_u·q_i) + Σ_j softplus(p_u·q_j)`` of the MF surrogate."""
    n_users, n_items, dim = sizes
    p = theta[: n_users * dim].view(n_users, dim)
    q = theta[n_users * dim :].view(n_items, dim)
    pu = p[users]
    pos_logit = (pu * q[pos]).sum(-1)
    neg_logit = torch.einsum("nd,nkd->nk", pu, q[neg])
    return F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)


def _conjugate_gradient(hvp, b: torch.Tensor, iters: int) -> torch.Tensor:
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = r @ r
    for _ in range(iters):
        if rr.sqrt() <= 1e-10 * b.norm():
            break
        hd = hvp(d)
        alpha = rr / (d @ hd)
        x += alpha * d
        r -= alpha * hd
        rr_new = r @ r
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x


def surrogate_influence(
    users: np.ndarray, items: np.ndarray, *, seed: int, settings: SurrogateSettings
) -> np.ndarray:
    """Influence of removing each interaction on the surrogate's empirical risk.

    Trains MF (``ŷ_ui = σ(p_u·q_i)``, BCE with ``n_neg`` sampled negatives, L2 ``wd``) on the
    interactions, then ``I(s) = (1/N) ∇_θL(s)ᵀ (H + δI)⁻¹ ḡ`` with ``ḡ = (1/N) Σ_i ∇_θL(s_i)``
    and ``H`` the Hessian of the regularised mean loss (``H⁻¹ḡ`` by conjugate gradient on
    Hessian-vector products; ``∇L(s)ᵀx`` for all ``s`` at once by one forward-mode JVP). Positive:
    removing ``s`` raises the risk, so ``s`` is worth keeping (DEALRec Eq. 4–6).

    Parameters
    ----------
    users, items : (N,) array
        User and target item of each sample.

    Returns
    -------
    (N,) float64

    Memory: O((U + I) · dim + N · n_neg · dim).
    """
    _, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    n_users, n_items, dim = int(u.max()) + 1, len(item_ids), settings.dim
    rng = np.random.default_rng(seed)
    if n_items > 1:  # negatives differ from the positive item
        neg = (i[:, None] + 1 + rng.integers(n_items - 1, size=(len(i), settings.n_neg))) % n_items
    else:
        logger.warning("dealrec: one item in the pool, the surrogate has no negatives")
        neg = np.zeros((len(i), 0), dtype=np.int64)
    args = (torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(neg))
    sizes = (n_users, n_items, dim)
    gen = torch.Generator().manual_seed(seed)
    theta = 0.1 * torch.randn((n_users + n_items) * dim, generator=gen, dtype=torch.float64)
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=settings.lr)
    wd = settings.weight_decay
    for _ in range(settings.epochs):
        opt.zero_grad()
        loss = _per_sample_losses(theta, *args, sizes).mean() + 0.5 * wd * (theta @ theta)
        loss.backward()
        opt.step()
    theta = theta.detach().requires_grad_(True)
    mean_loss = _per_sample_losses(theta, *args, sizes).mean()
    (g_bar,) = torch.autograd.grad(mean_loss, theta, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(g_bar, theta, grad_outputs=v, retain_graph=True)
        return hv + (wd + settings.damping) * v

    x = _conjugate_gradient(hvp, g_bar.detach(), settings.cg_iters)
    _, directional = torch.func.jvp(
        lambda t: _per_sample_losses(t, *args, sizes), (theta.detach(),), (x,)
    )
    return directional.numpy() / len(i)


def minmax(x: np.ndarray) -> np.ndarray:
    """``(x − min) / (max − min)``, all zeros when ``x`` is constant."""
    lo, span = float(x.min()), float(x.max() - x.min())
    return (x - lo) / span if span > 0 else np.zeros_like(x, dtype=np.float64)


@register_selector("dealrec")
def select_dealrec(
    features: FeatureTable,
    n: int,
    *,
    seed: int,
    lam: float = 1.0,
    n_bins: int = 50,
    user_key: str = "user",
    item_key: str = "item",
    **surrogate: object,
) -> Selection:
    """DEALRec: ``score(s) = Î(s) + λ·δ̂(s)``, then coverage-enhanced selection over score bins.

    * ``I(s)``: influence of removing ``s`` on the empirical risk of a cheap surrogate recommender
      (:func:`surrogate_influence`, MF on ``train_groups[user_key]`` × ``train_groups[item_key]``).
    * Gap regularisation ``δ(s) = ‖∇_φ L_LLM(s)‖₂``, the effort score = ``grad_norms``.
    * ``Î``, ``δ̂``: min-max scaled to [0, 1] so that ``λ`` is scale-free (our choice; the paper
      adds the raw terms and tunes λ).
    * Coverage-enhanced selection: ``n_bins`` equal-width score groups, budget spread from the
      smallest group up (:func:`~goracs_ray.select.baselines._common.coverage_sample`).

    Extra keyword options are :class:`SurrogateSettings` fields. Randomness (negatives, init, group
    sampling) from ``seed`` only.

    Reference: Lin, Wang, Wang, Zhang, Feng, Chua, "Data-efficient Fine-tuning for LLM-based
    Recommendation", SIGIR 2024 (DEALRec, §3.2–3.3).
    """
    check_budget(features, n)
    if not lam >= 0.0:
        raise ValueError(f"`lam` (effort-score weight) must be >= 0, got {lam}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")
    unknown = set(surrogate) - {f.name for f in dataclasses.fields(SurrogateSettings)}
    if unknown:
        raise TypeError(f"dealrec got unknown option(s) {sorted(unknown)}")
    settings = SurrogateSettings(**surrogate)
    features.require("grad_norms", method="dealrec")
    users = require_group(features, user_key, method="dealrec")
    items = require_group(features, item_key, method="dealrec")
    influence = surrogate_influence(users, items, seed=seed, settings=settings)
    effort = features.grad_norms.astype(np.float64)
    scores = minmax(influence) + lam * minmax(effort)
    picks, trace = coverage_sample(equal_width_bins(scores, n_bins), n, np.random.default_rng(seed))
    info = {
        "seed": seed,
        "lam": lam,
        "n_bins": n_bins,
        "surrogate": dataclasses.asdict(settings),
        "influence_min": float(influence.min()),
        "influence_max": float(influence.max()),
        **trace,
    }
    return make_selection(features, picks, "dealrec", info)
