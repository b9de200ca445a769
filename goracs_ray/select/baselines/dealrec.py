"""DEALRec: surrogate influence + LLM effort score, then coverage-enhanced selection.

The surrogate is a small matrix-factorisation recommender trained here (torch, CPU) on the pool's
(user, target item) interactions from ``FeatureTable.train_groups`` — the minimal input that lets
influence be estimated without a second model checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from goracs_ray.select.baselines._common import (
    check_budget,
    coverage_sample,
    equal_width_bins,
    make_selection,
    require_group,
)
from goracs_ray.select.registry import register_selector
from goracs_ray.select.types import FeatureTable, Selection

if TYPE_CHECKING:  # torch is imported where used: `goracs select` must not load it otherwise
    import torch

__all__ = [
    "MFSurrogate",
    "SurrogateSettings",
    "minmax",
    "select_dealrec",
    "surrogate_influence",
    "train_surrogate",
]

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


@dataclasses.dataclass(frozen=True, eq=False)
class MFSurrogate:
    """A trained matrix-factorisation surrogate and its training interactions.

    Attributes
    ----------
    theta : (P,) float64 tensor
        Flat parameters: user factors ``P (U, dim)`` then item factors ``Q (I, dim)``.
    users, pos : (N,) int64 tensors
        Contiguous user and positive-item index of each interaction.
    neg : (N, n_neg) int64 tensor
        Sampled negative items (never the positive one).
    shape : (U, I, dim)
    """

    theta: torch.Tensor
    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    shape: tuple[int, int, int]

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        """(N,) BCE losses ``softplus(−p_u·q_i) + Σ_j softplus(p_u·q_j)`` at ``theta``."""
        import torch
        import torch.nn.functional as F

        n_users, n_items, dim = self.shape
        p = theta[: n_users * dim].view(n_users, dim)
        q = theta[n_users * dim :].view(n_items, dim)
        pu = p[self.users]
        pos_logit = (pu * q[self.pos]).sum(-1)
        neg_logit = torch.einsum("nd,nkd->nk", pu, q[self.neg])
        return F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)


def train_surrogate(
    users: np.ndarray, items: np.ndarray, *, seed: int, settings: SurrogateSettings
) -> MFSurrogate:
    """Fit MF (``ŷ_ui = σ(p_u·q_i)``, BCE, ``n_neg`` sampled negatives, L2 ``weight_decay``).

    Parameters
    ----------
    users, items : (N,) array
        User and target item of each sample (any hashable dtype).

    Memory: O((U + I) · dim + N · n_neg · dim).
    """
    import torch

    _, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    n_items = len(item_ids)
    rng = np.random.default_rng(seed)
    if n_items > 1:  # shift by 1..I-1 so a negative is never the positive item
        neg = (i[:, None] + 1 + rng.integers(n_items - 1, size=(len(i), settings.n_neg))) % n_items
    else:
        logger.warning("dealrec: one item in the pool, the surrogate has no negatives")
        neg = np.zeros((len(i), 0), dtype=np.int64)
    shape = (int(u.max()) + 1, n_items, settings.dim)
    gen = torch.Generator().manual_seed(seed)
    size = (shape[0] + shape[1]) * shape[2]
    theta = (0.1 * torch.randn(size, generator=gen, dtype=torch.float64)).requires_grad_(True)
    model = MFSurrogate(
        theta, torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(neg), shape
    )
    opt = torch.optim.Adam([theta], lr=settings.lr)
    for _ in range(settings.epochs):
        opt.zero_grad()
        loss = model.losses(theta).mean() + 0.5 * settings.weight_decay * (theta @ theta)
        loss.backward()
        opt.step()
    return dataclasses.replace(model, theta=theta.detach())


def _conjugate_gradient(hvp, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given by ``hvp(v) = A v``."""
    import torch

    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = r @ r
    for _ in range(iters):
        if rr.sqrt() <= 1e-12 * b.norm():
            break
        hd = hvp(d)
        alpha = rr / (d @ hd)
        x += alpha * d
        r -= alpha * hd
        rr_new = r @ r
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x


def surrogate_influence(model: MFSurrogate, settings: SurrogateSettings) -> np.ndarray:
    """Influence of removing each interaction on the surrogate's empirical risk (DEALRec Eq. 4–6).

    ``I(s) = (1/N) ∇_θL(s)ᵀ (H + (wd + δ)I)⁻¹ ḡ`` with ``ḡ = (1/N) Σ_i ∇_θL(s_i)`` and ``H`` the
    Hessian of the mean loss at the trained ``θ``: ``H⁻¹ḡ`` by conjugate gradient on
    Hessian-vector products, ``∇L(s)ᵀx`` for all ``s`` at once by a double-backward JVP. Positive:
    removing ``s`` raises the risk, so ``s`` is worth keeping.

    Returns
    -------
    (N,) float64

    Memory: O(P + N · n_neg · dim); no P × P Hessian is formed.
    """
    import torch

    theta = model.theta.detach().requires_grad_(True)
    (g_bar,) = torch.autograd.grad(model.losses(theta).mean(), theta, create_graph=True)
    shift = settings.weight_decay + settings.damping

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(g_bar, theta, grad_outputs=v, retain_graph=True)
        return hv + shift * v

    x = _conjugate_gradient(hvp, g_bar.detach(), settings.cg_iters)
    # J x (J: per-sample loss Jacobian) by the double-backward trick: J x = ∂/∂w ⟨Jᵀw, x⟩.
    losses = model.losses(theta)
    w = torch.zeros_like(losses, requires_grad=True)
    (jt_w,) = torch.autograd.grad(losses, theta, grad_outputs=w, create_graph=True)
    (directional,) = torch.autograd.grad(jt_w, w, grad_outputs=x)
    return directional.detach().numpy() / model.users.shape[0]


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
      (:func:`train_surrogate`, :func:`surrogate_influence`; MF on the interactions
      ``train_groups[user_key]`` × ``train_groups[item_key]``).
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
    model = train_surrogate(users, items, seed=seed, settings=settings)
    influence = surrogate_influence(model, settings)
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
