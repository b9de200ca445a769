"""Per-sample gradients of the LoRA target parameters, without a per-sample backward loop.

Five methods give the same numbers (tested to rel. error ≤ 1e-4):

``hooks`` (default)
    The model's own HF forward (public transformers/peft APIs only) with forward hooks on the
    target Linear layers (lora_A / lora_B are bias-free ``nn.Linear``), and one ``autograd.grad``
    of Σ_i loss_i with respect to their *outputs*. For a linear layer ``y = x Wᵀ`` the per-sample
    weight gradient is ``G_i = Σ_t δ_{i,t} x_{i,t}ᵀ`` (METHOD.md §6), with ``x`` the layer input
    captured by the hook and ``δ = ∂(Σ loss)/∂y``; samples never mix because attention and the
    loss are per sample. Never builds parameter ``.grad``. The prompt prefix shared by every row
    of the batch (the instruction text) runs once, and the rows continue from its KV cache
    (``DynamicCache``, ``position_ids``), the LM head only at loss positions. Exactly, because
    the cache entries (and prefix hidden states) that depend on a target enter the rows' pass as
    per-row copies: their per-row gradients are pulled back through the prefix's one-row graph
    in one batched backward (``autograd.grad(..., is_grads_batched=True)``), which gives each
    row's ``δ`` at the prefix positions.
``fused`` (opt-in)
    The same hooks on :func:`goracs_ray.features.llama_forward.llama_losses`, a forward of the
    LLaMA layout that also skips what the gradients do not need (the last layer's queries, MLP
    and head only at loss positions, …): about 2× ``hooks`` on CPU, but it reads model internals.
    Used where :func:`~goracs_ray.features.llama_forward.supports_fused_forward` holds and,
    through :class:`CheckedGrads` (as every ``goracs features`` actor runs it), only once its
    first batch has matched the stock path.
``hooks_hf``
    ``hooks`` without the shared prefix or segments: one HF forward of the whole rows. Under
    DeepSpeed ZeRO-3 ``hooks`` is this: every rank must run the same forwards, each gathering the
    partitioned weights collectively, whatever its batch (and the gathering does not run inside
    a batched backward).
``vmap``
    ``torch.func.vmap(grad(loss))`` over the batch with ``functional_call``: generic (any
    parameter, not only Linear weights), but computes the full-vocabulary logits.
``loop``
    The reference: one forward + backward per (unpadded) sample. For tests and benchmarks.

All of them evaluate the model in eval mode (LoRA dropout off), so the numbers are deterministic.
Batches are right-padded: with causal attention real tokens never see padding, so the hooks and
vmap paths run without an attention mask (letting SDPA use its causal kernel) and match the loop,
which runs each sample unpadded.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import torch
from transformers import DynamicCache

from goracs_ray.data.schema import Task
from goracs_ray.features.llama_forward import fused_forward_problem, llama_losses
from goracs_ray.models import text
from goracs_ray.models.lm import sliding_window, zero3_partitioned
from goracs_ray.models.losses import (
    answer_positions,
    causal_lm_loss,
    causal_lm_loss_from_hidden,
    ctr_logits_from_hidden,
    ctr_loss,
    ctr_loss_from_logits2,
    ctr_targets,
    loss_window,
)

__all__ = ["CheckedGrads", "GradMethod", "PerSampleGrads", "per_sample_grads"]

logger = logging.getLogger(__name__)


class GradMethod(str, enum.Enum):
    """How per-sample gradients are computed (see the module docstring)."""

    HOOKS = "hooks"
    FUSED = "fused"
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


def _loss_from_hidden(hidden, labels, head, task: Task, token_ids) -> torch.Tensor:
    """(B,) per-sample losses from final hidden states (B, T, H), the head at loss positions."""
    if task is Task.CTR:
        two = ctr_logits_from_hidden(hidden, labels, head, token_ids)
        return ctr_loss_from_logits2(two, ctr_targets(labels, token_ids))
    return causal_lm_loss_from_hidden(hidden, labels, head)


def _per_row(t: torch.Tensor, rows: int, links: tuple[list, list]) -> torch.Tensor:
    """A prefix tensor (1, …) for ``rows`` rows: an expanded view when no gradient flows through
    it, else a per-row leaf copy (recorded in ``links`` as (source, leaf)), so that each row's
    gradient with respect to it stays apart."""
    if not t.requires_grad:
        return t.expand(rows, *t.shape[1:])
    leaf = t.detach().expand(rows, *t.shape[1:]).clone().requires_grad_()
    links[0].append(t)
    links[1].append(leaf)
    return leaf


def _stock_forward(
    model, batch, task: Task, token_ids, phase: list[str], prefix: int, *, segments: bool = True
):
    """The model's own decoder over up to three segments of the rows, each continuing from the
    KV cache of the ones before (``DynamicCache``, ``position_ids``):

    ``"prefix"``, positions [0, P)
        The prompt prefix shared by every row (``prefix`` = P tokens, 0: none), run once.
    ``"mid"``, positions [P, c)
        Every row's prompt up to the first position whose hidden state enters a loss (``c``:
        the last prompt token of the row whose answer starts first). Its keys and values carry
        the gradient to the targets; its hidden states do not reach the loss, so backward skips
        its attention outputs and MLPs. Run only when at least
        :data:`~goracs_ray.models.text.MIN_SHARED_PREFIX` tokens long.
    ``"rows"``, positions [c, T)
        The rest, where the losses are read; the LM head at loss positions only.

    Right-padded rows: every position before ``c`` is a real token of every row, and causal
    attention keeps real tokens from seeing the padding, so no attention mask is needed (and
    without one SDPA can take its fast causal kernel).

    Returns
    -------
    (hidden, losses, links)
        Final-norm hidden states (B, T, H), per-sample losses (B,) with grad, and the prefix
        tensors that depend on a target with their per-row leaves (:func:`_per_row`).
        ``phase[0]`` names the segment running (for the hooks).
    """
    decoder, head = _decoder_and_head(model)
    ids, labels = batch["input_ids"], batch["labels"]
    rows, config = ids.shape[0], decoder.config
    links: tuple[list, list] = ([], [])
    start = _loss_start(labels, task)
    split = start if segments and start - prefix >= text.MIN_SHARED_PREFIX else prefix
    cache = DynamicCache(config=config) if split else None
    hidden = []
    if prefix:
        phase[0] = "prefix"
        first = decoder(
            input_ids=ids[:1, :prefix], cache=DynamicCache(config=config), use_cache=True
        )
        for layer, (keys, values, *_) in enumerate(first.cache):
            cache.update(_per_row(keys, rows, links), _per_row(values, rows, links), layer)
        # per-row prefix states only where a loss reads them (e.g. `loss_on: all`): zero
        # gradients would still cost a batched backward through the prefix's attention
        before = first.last_hidden_state
        if start < prefix:
            hidden.append(_per_row(before, rows, links))
        else:
            hidden.append(before.detach().expand(rows, -1, -1))
    if split > prefix:
        phase[0] = "mid"
        hidden.append(_segment(decoder, ids, prefix, split, cache).last_hidden_state)
    phase[0] = "rows"
    hidden.append(_segment(decoder, ids, split, ids.shape[1], cache).last_hidden_state)
    if start < prefix:  # the loss reads the prefix: [prefix, rows] (no "mid")
        losses = _loss_from_hidden(torch.cat(hidden, 1), labels, head, task, token_ids)
    else:
        losses = _loss_from_hidden(hidden[-1], labels[:, split:], head, task, token_ids)
    return torch.cat(hidden, 1) if len(hidden) > 1 else hidden[0], losses, links


def _segment(decoder, ids: torch.Tensor, start: int, stop: int, cache):
    """The decoder on positions [start, stop) of every row, after ``cache`` (None: from 0)."""
    if cache is None:
        return decoder(input_ids=ids[:, start:stop])
    positions = torch.arange(start, stop, device=ids.device).expand(ids.shape[0], -1)
    return decoder(
        input_ids=ids[:, start:stop], cache=cache, position_ids=positions, use_cache=True
    )


def _loss_start(labels: torch.Tensor, task: Task) -> int:
    """The first position whose hidden state a loss of the batch reads (labels (B, T))."""
    if task is Task.CTR:
        return int(answer_positions(labels).min())
    return labels.shape[1] - loss_window(labels)


def _stock_prefix(model, batch) -> int:
    """Prefix length :func:`_stock_forward` shares (0: none): not with a sliding window shorter
    than the batch (the cache would drop the prefix's oldest keys)."""
    seq_len = batch["input_ids"].shape[1]
    window = sliding_window(model.config)
    if window is not None and seq_len > window:
        return 0
    return text.shared_prefix_length(batch["input_ids"])


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


def _grads_hooks(model, batch, names, task, token_ids, *, method: GradMethod, with_hidden: bool):
    owners = _owner_modules(model, names)
    captured: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    phase = ["rows"]

    def make_hook(i):
        def hook(_mod, inputs, output):
            if not torch.is_grad_enabled():  # a no-grad pass (hidden states only)
                return
            if (i, phase[0]) in captured:
                raise RuntimeError(f"target `{names[i]}` ran twice in one forward")
            captured[i, phase[0]] = (inputs[0].detach(), output)

        return hook

    prefix = 0
    if method is GradMethod.HOOKS:
        prefix = _stock_prefix(model, batch)
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(owners)]
    try:
        with torch.enable_grad():
            links: tuple[list, list] = ([], [])
            if method is GradMethod.FUSED:
                losses, hidden = llama_losses(
                    model, batch, names, task, token_ids, owners, with_hidden=with_hidden
                )
            else:
                segments = method is GradMethod.HOOKS  # `hooks_hf`: one forward of whole rows
                hidden, losses, links = _stock_forward(
                    model, batch, task, token_ids, phase, prefix, segments=segments
                )
            missing = [names[i] for i in range(len(owners)) if (i, "rows") not in captured]
            if missing:
                raise RuntimeError(f"targets {missing} did not run in the forward")
            # (target, segment) pairs every row ran: "mid" (when split off) and "rows"
            slots = [(i, p) for i in range(len(owners)) for p in ("mid", "rows")]
            slots = [slot for slot in slots if slot in captured]
            outs = [captured[slot][1] for slot in slots]
            found = torch.autograd.grad(losses.sum(), outs + links[1], allow_unused=True)
            deltas, leaf_grads = found[: len(outs)], found[len(outs) :]
            prefix_deltas = _prefix_deltas(captured, len(owners), links[0], leaf_grads)
    finally:
        for h in handles:
            h.remove()
    per_target: dict[int, torch.Tensor] = {}
    for (i, part), d in zip(slots, deltas, strict=True):
        x, y = captured[i, part]
        if d is None:  # this segment's outputs do not reach the loss
            g = torch.zeros(x.shape[0], y.shape[-1], x.shape[-1], device=x.device)
        else:
            g = torch.einsum("bto,bti->boi", d.float(), x.float())
        per_target[i] = g + per_target[i] if i in per_target else g
    pieces = []
    for i in range(len(owners)):
        g = per_target[i]
        if prefix_deltas.get(i) is not None:  # δ of every row at the shared prefix positions
            x_p = captured[i, "prefix"][0][0].float()  # (P, in)
            g = g + torch.einsum("bto,ti->boi", prefix_deltas[i].float(), x_p)
        pieces.append(g.flatten(1))
    grads = torch.cat(pieces, dim=1)
    hidden = hidden.detach() if with_hidden else None
    return PerSampleGrads(grads, grads.norm(dim=1), losses.detach().float(), hidden)


def _prefix_deltas(captured, n_targets: int, sources, leaf_grads) -> dict[int, torch.Tensor]:
    """Per-row ``δ`` (B, P, out) at the prefix outputs of each target, from the rows' gradients
    with respect to the per-row copies of the prefix tensors: one batched backward (a vmap over
    the rows) through the prefix's one-row graph."""
    used = [(s, g) for s, g in zip(sources, leaf_grads, strict=True) if g is not None]
    targets = [i for i in range(n_targets) if (i, "prefix") in captured]
    if not used or not targets:
        return {}
    pulled = torch.autograd.grad(
        [s for s, _ in used],
        [captured[i, "prefix"][1] for i in targets],
        grad_outputs=[g.unsqueeze(1) for _, g in used],  # (B, 1, …): batch of cotangents
        is_grads_batched=True,
        allow_unused=True,
    )
    return {i: None if d is None else d[:, 0] for i, d in zip(targets, pulled, strict=True)}


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
        ``"hooks"`` (default), ``"fused"`` (unverified here: :class:`CheckedGrads` verifies it;
        the stock ``hooks`` where :func:`supports_fused_forward` fails), ``"hooks_hf"``,
        ``"vmap"`` or ``"loop"``.
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
    if method is GradMethod.FUSED and fused_forward_problem(model, names, seq_len) is not None:
        method = GradMethod.HOOKS
    if method is GradMethod.HOOKS and zero3_partitioned(model):
        # ZeRO-3: every rank must run the same forwards (each gathers the partitioned weights
        # collectively), whatever its batch; one forward of whole rows does
        method = GradMethod.HOOKS_HF
    return _grads_hooks(
        model, batch, names, task, token_ids, method=method, with_hidden=with_hidden
    )


class CheckedGrads:
    """:func:`per_sample_grads` whose fused forward (``method="fused"``) is trusted only once
    verified.

    Where the fused forward passes its capability check, the first call computes the batch both
    ways and compares the results with the stock path (``hooks``): norms and losses (and final
    hidden states, when asked for) within ``rtol``. On a mismatch, or an exception in the fused
    forward (then or on any later batch), it logs one WARNING and uses the stock path from then
    on. Every other method is passed through. One instance per model (each features actor holds
    one).
    """

    def __init__(self, method: GradMethod | str = GradMethod.HOOKS, *, rtol: float = 1e-4):
        self.method = GradMethod(method)
        self.rtol = rtol
        self.fused: bool | None = None
        """None until the first fused batch is checked; then whether the fused path is used."""
        self._told: set[str] = set()

    def __call__(self, model, batch, names, **kw) -> PerSampleGrads:
        """Per-sample gradients of ``batch`` (arguments as :func:`per_sample_grads`)."""
        if self.method is not GradMethod.FUSED:
            return per_sample_grads(model, batch, names, method=self.method, **kw)
        problem = fused_forward_problem(model, names, batch["input_ids"].shape[1])
        if self.fused is False or problem is not None:
            if problem is not None and problem not in self._told:
                self._told.add(problem)  # once per reason, not per batch
                logger.info("fused forward not used: %s; using the stock path (hooks)", problem)
            return per_sample_grads(model, batch, names, method=GradMethod.HOOKS, **kw)
        if self.fused:
            try:
                return per_sample_grads(model, batch, names, method=GradMethod.FUSED, **kw)
            except Exception as exc:  # noqa: BLE001 - any failure: the stock path is exact
                return self._fall_back(model, batch, names, f"it raised {exc!r}", **kw)
        stock = per_sample_grads(model, batch, names, method=GradMethod.HOOKS, **kw)
        try:
            fused = per_sample_grads(model, batch, names, method=GradMethod.FUSED, **kw)
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
            "fused LLaMA forward disabled for this run: %s; using the stock HF path (hooks)",
            reason,
        )
        self.fused = False
        if stock is not None:
            return stock
        return per_sample_grads(model, batch, names, method=GradMethod.HOOKS, **kw)


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
