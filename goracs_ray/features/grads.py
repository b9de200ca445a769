"""Per-sample gradients of the LoRA target parameters, without a per-sample backward loop.

Four methods give the same numbers (tested to rel. error ≤ 1e-4):

``hooks`` (default)
    One forward and one ``autograd.grad`` of Σ_i loss_i with respect to the *outputs* of the
    target Linear layers (lora_A / lora_B are bias-free ``nn.Linear``). For a linear layer
    ``y = x Wᵀ`` the per-sample weight gradient is ``G_i = Σ_t δ_{i,t} x_{i,t}ᵀ`` (METHOD.md §6),
    with ``x`` the layer input captured by a forward hook and ``δ = ∂(Σ loss)/∂y``; samples never
    mix because attention and the loss are per sample. Never builds parameter ``.grad``. On a
    LLaMA-like model (LLaMA, Mistral, Qwen2) the forward is
    :func:`goracs_ray.features.llama_forward.llama_losses`, which skips what the gradients do
    not need (no autograd below the first target layer, the shared prompt prefix computed once,
    the last layer's queries/MLP/head only at loss positions); on anything else (DeepSpeed
    ZeRO-3, other architectures, a sliding window shorter than the batch) it is ``hooks_hf``.
``hooks_hf``
    The same with the model's own HF forward (every position, autograd everywhere); works under
    any engine that runs the module's forward (plain torch, DeepSpeed).
``vmap``
    ``torch.func.vmap(grad(loss))`` over the batch with ``functional_call``: generic (any
    parameter, not only Linear weights), but computes the full-vocabulary logits.
``loop``
    The reference: one forward + backward per (unpadded) sample. For tests and benchmarks.

All three evaluate the model in eval mode (LoRA dropout off), so the numbers are deterministic.
Batches are right-padded: with causal attention real tokens never see padding, so the hooks and
vmap paths run without an attention mask (letting SDPA use its causal kernel) and match the loop,
which runs each sample unpadded.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import torch

from goracs_ray.data.schema import Task
from goracs_ray.features.llama_forward import llama_losses, supports_llama_forward
from goracs_ray.models.losses import (
    causal_lm_loss,
    causal_lm_loss_from_hidden,
    ctr_logits_from_hidden,
    ctr_loss,
    ctr_loss_from_logits2,
    ctr_targets,
)

__all__ = ["CheckedGrads", "GradMethod", "PerSampleGrads", "per_sample_grads"]

logger = logging.getLogger(__name__)


class GradMethod(str, enum.Enum):
    """How per-sample gradients are computed (see the module docstring)."""

    HOOKS = "hooks"
    HOOKS_HF = "hooks_hf"
    VMAP = "vmap"
    LOOP = "loop"


@dataclasses.dataclass(frozen=True)
class PerSampleGrads:
    """Per-sample gradients of one batch.

    Attributes
    ----------
    grads : (B, P) float32
        Flattened gradients of the target parameters (in ``names`` order, each row-major).
    norms : (B,) float32
        ``‖grads_i‖₂``.
    losses : (B,) float32
        Per-sample losses (SeqRec token mean or CTR 2-way CE).
    hidden : (B, T, H) float32 or None
        Final hidden states when asked (``with_hidden``, hooks methods only), for LLM embeddings.
    """

    grads: torch.Tensor
    norms: torch.Tensor
    losses: torch.Tensor
    hidden: torch.Tensor | None = None


def _decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _hidden_loss(model, batch, task: Task, token_ids):
    decoder, head = _decoder_and_head(model)
    # No attention mask: with right padding and causal attention, real tokens never attend to
    # padding, and without a mask SDPA can take its fast causal kernel.
    hidden = decoder(input_ids=batch["input_ids"])[0]
    labels = batch["labels"]
    if task is Task.CTR:
        two = ctr_logits_from_hidden(hidden, labels, head, token_ids)
        return hidden, ctr_loss_from_logits2(two, ctr_targets(labels, token_ids))
    return hidden, causal_lm_loss_from_hidden(hidden, labels, head)


def _owner_modules(model, names: list[str]) -> list[torch.nn.Linear]:
    owners = []
    for name in names:
        mod_name, _, attr = name.rpartition(".")
        try:  # a path lookup: no walk over every module of the model per batch
            mod = model.get_submodule(mod_name)
        except AttributeError:
            mod = None
        if attr != "weight" or not isinstance(mod, torch.nn.Linear) or mod.bias is not None:
            raise ValueError(
                f"grad method `hooks` needs bias-free Linear weights; `{name}` is not one. "
                "Use `grad_method: vmap` for other parameters"
            )
        owners.append(mod)
    return owners


def _grads_hooks(model, batch, names, task, token_ids, *, fast: bool, with_hidden: bool):
    owners = _owner_modules(model, names)
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(i):
        def hook(_mod, inputs, output):
            if not torch.is_grad_enabled():  # a no-grad pass (hidden states only)
                return
            if i in captured:
                raise RuntimeError(f"target `{names[i]}` ran twice in one forward")
            captured[i] = (inputs[0].detach(), output)

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(owners)]
    try:
        with torch.enable_grad():
            if fast:
                losses, hidden = llama_losses(
                    model, batch, names, task, token_ids, owners, with_hidden=with_hidden
                )
            else:
                hidden, losses = _hidden_loss(model, batch, task, token_ids)
            outs = [captured[i][1] for i in range(len(owners))]
            deltas = torch.autograd.grad(losses.sum(), outs)
    finally:
        for h in handles:
            h.remove()
    pieces = [
        torch.einsum("bto,bti->boi", d.float(), captured[i][0].float()).flatten(1)
        for i, d in enumerate(deltas)
    ]
    grads = torch.cat(pieces, dim=1)
    hidden = hidden.detach() if with_hidden else None
    return PerSampleGrads(grads, grads.norm(dim=1), losses.detach().float(), hidden)


def _sample_loss(model, params, input_ids, labels, task, token_ids):
    from torch.func import functional_call

    logits = functional_call(model, params, (), {"input_ids": input_ids}, strict=False).logits
    if task is Task.CTR:
        return ctr_loss(logits, labels, token_ids)
    return causal_lm_loss(logits, labels)


def _grads_vmap(model, batch, names, task, token_ids) -> PerSampleGrads:
    from torch.func import grad, vmap

    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}

    def one(p, ids, lab):
        loss = _sample_loss(model, p, ids[None], lab[None], task, token_ids)[0]
        return loss, loss

    g, losses = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0))(
        params, batch["input_ids"], batch["labels"]
    )
    grads = torch.cat([g[n].detach().float().flatten(1) for n in names], dim=1)
    return PerSampleGrads(grads, grads.norm(dim=1), losses.detach().float())


def _grads_loop(model, batch, names, task, token_ids) -> PerSampleGrads:
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    rows, losses = [], []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i : i + 1, :n]
        lab = batch["labels"][i : i + 1, :n]
        with torch.enable_grad():
            out = model(input_ids=ids)
            if task is Task.CTR:
                loss = ctr_loss(out.logits, lab, token_ids)[0]
            else:
                loss = causal_lm_loss(out.logits, lab)[0]
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]
        rows.append(torch.cat([g.float().flatten() for g in flat]))
        losses.append(loss.detach().float())
    grads = torch.stack(rows)
    return PerSampleGrads(grads, grads.norm(dim=1), torch.stack(losses))


def per_sample_grads(
    model,
    batch: dict[str, torch.Tensor],
    names: list[str],
    *,
    task: Task | str = Task.SEQREC,
    method: GradMethod | str = GradMethod.HOOKS,
    token_ids: torch.Tensor | None = None,
    with_hidden: bool = False,
) -> PerSampleGrads:
    """Per-sample gradients of ``names`` for each row of ``batch``.

    Parameters
    ----------
    model : PeftModel or PreTrainedModel
        In eval mode; the target parameters must have ``requires_grad=True``.
    batch : dict
        From :func:`goracs_ray.models.text.tokenize_samples`: ``input_ids``, ``attention_mask``,
        ``labels``, each (B, T) int64, right-padded.
    names : list of str
        Target parameter names (:func:`goracs_ray.models.lm.target_parameter_names`).
    task : Task or str
        ``"seqrec"``: causal-LM loss averaged over each sample's label tokens; ``"ctr"``: 2-way
        ("No", "Yes") cross-entropy at the last prompt token.
    method : GradMethod or str
        ``"hooks"`` (default), ``"hooks_hf"``, ``"vmap"`` or ``"loop"``.
    token_ids : (2,) int64, optional
        ("No", "Yes") token ids, required for CTR.
    with_hidden : bool
        Also return the final hidden states of every position (hooks methods; for embeddings).

    Returns
    -------
    PerSampleGrads
        Memory: ``B × P`` floats for the gradients (P = total size of the targets).
    """
    task, method = Task(task), GradMethod(method)
    if task is Task.CTR and token_ids is None:
        raise ValueError("`token_ids` is required for task `ctr` (see models.losses.ctr_token_ids)")
    if not names:
        raise ValueError("`names` is empty: give at least one target parameter")
    if method is GradMethod.VMAP:
        return _grads_vmap(model, batch, names, task, token_ids)
    if method is GradMethod.LOOP:
        return _grads_loop(model, batch, names, task, token_ids)
    seq_len = batch["input_ids"].shape[1]
    fast = method is GradMethod.HOOKS and supports_llama_forward(model, names, seq_len)
    return _grads_hooks(model, batch, names, task, token_ids, fast=fast, with_hidden=with_hidden)


class CheckedGrads:
    """:func:`per_sample_grads` whose fused LLaMA forward is trusted only once verified.

    With ``method="hooks"`` on a model the fused forward supports, the first call computes the
    batch both ways and compares the results with the stock HF path (``hooks_hf``): norms and
    losses (and final hidden states, when asked for) within ``rtol``. On a mismatch, or an
    exception in the fused forward (then or on any later batch), it logs one WARNING and uses the
    stock path from then on. Every other method is passed through. One instance per model (each
    features actor holds one).
    """

    def __init__(self, method: GradMethod | str = GradMethod.HOOKS, *, rtol: float = 1e-4):
        self.method = GradMethod(method)
        self.rtol = rtol
        self.fused: bool | None = None
        """None until the first fused batch is checked; then whether the fused path is used."""

    def __call__(self, model, batch, names, **kw) -> PerSampleGrads:
        """Per-sample gradients of ``batch`` (arguments as :func:`per_sample_grads`)."""
        seq_len = batch["input_ids"].shape[1]
        if self.method is not GradMethod.HOOKS:
            return per_sample_grads(model, batch, names, method=self.method, **kw)
        if self.fused is False or not supports_llama_forward(model, names, seq_len):
            return per_sample_grads(model, batch, names, method=GradMethod.HOOKS_HF, **kw)
        if self.fused:
            try:
                return per_sample_grads(model, batch, names, method=GradMethod.HOOKS, **kw)
            except Exception as exc:  # noqa: BLE001 - any failure: the stock path is exact
                return self._fall_back(model, batch, names, f"it raised {exc!r}", **kw)
        stock = per_sample_grads(model, batch, names, method=GradMethod.HOOKS_HF, **kw)
        try:
            fused = per_sample_grads(model, batch, names, method=GradMethod.HOOKS, **kw)
        except Exception as exc:  # noqa: BLE001
            return self._fall_back(model, batch, names, f"it raised {exc!r}", stock=stock, **kw)
        worst = _relative_gap(fused, stock)
        if not worst <= self.rtol:
            reason = f"its norms/losses differ from the stock path by {worst:.2e} (> {self.rtol})"
            return self._fall_back(model, batch, names, reason, stock=stock, **kw)
        self.fused = True
        return fused

    def _fall_back(self, model, batch, names, reason: str, *, stock=None, **kw) -> PerSampleGrads:
        logger.warning(
            "fused LLaMA forward disabled for this run: %s; using the stock HF path (hooks_hf)",
            reason,
        )
        self.fused = False
        if stock is not None:
            return stock
        return per_sample_grads(model, batch, names, method=GradMethod.HOOKS_HF, **kw)


def _relative_gap(a: PerSampleGrads, b: PerSampleGrads) -> float:
    """Largest relative difference of the norms and losses of two results of one batch."""
    gaps = []
    for x, y in ((a.norms, b.norms), (a.losses, b.losses)):
        x, y = x.float(), y.float()
        gaps.append(float(((x - y).abs() / y.abs().clamp_min(1e-12)).max()))
    if a.hidden is not None and b.hidden is not None:  # LLM embeddings come from these
        scale = float(b.hidden.abs().max().clamp_min(1e-12))
        gaps.append(float((a.hidden.float() - b.hidden.float()).abs().max()) / scale)
    return max(gaps)
