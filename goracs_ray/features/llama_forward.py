"""A LLaMA forward that computes only what per-sample LoRA gradients need (``hooks`` method).

The generic path runs the whole HF model with autograd on and backpropagates through it. For the
per-sample gradients of a few LoRA matrices much of that work is wasted, and this forward skips it
while calling the model's own submodules (norms, projections with their LoRA adapters, MLPs, rotary
embedding, LM head), so the numbers equal the HF forward (tested against the per-sample loop):

* layers below the first layer holding a target run under ``torch.no_grad`` (nothing is saved for
  backward, and backward stops at the target layer);
* in those layers the prompt prefix shared by every row of the batch (the instruction text) is
  computed once and its keys/values reused by every row (causal attention: a prefix's hidden
  states do not depend on what follows);
* the last layer computes keys and values at every position but queries, attention output, MLP,
  final norm and LM head only at the positions whose logits enter the loss (the answer tokens for
  SeqRec, the last prompt token for CTR);
* the final hidden states at every position (for LLM embeddings) are computed only on request, by
  one extra no-grad pass of the last layer (sharing the prefix too when the target is in it).

Only plain LLaMA-architecture models on one device are supported (:func:`supports_llama_forward`);
anything else (another architecture, DeepSpeed ZeRO-3 partitioned weights) uses the HF forward.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from transformers.models.llama.modeling_llama import repeat_kv

from goracs_ray.data.schema import Task
from goracs_ray.models.losses import (
    IGNORE_INDEX,
    answer_positions,
    ctr_loss_from_logits2,
    ctr_targets,
    token_loss_from_hidden,
)

__all__ = ["llama_losses", "supports_llama_forward"]

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")

MIN_SHARED_PREFIX = 8
"""Shortest common prompt prefix (tokens) worth computing once per batch."""


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_llama_forward(model, names: list[str]) -> bool:
    """True if ``model`` is a LLaMA causal LM on plain torch and every target is in a layer."""
    base = _base(model)
    if getattr(getattr(base, "config", None), "model_type", None) != "llama":
        return False
    if any(hasattr(p, "ds_id") for p in base.parameters()):  # DeepSpeed ZeRO-3 partitioned
        return False
    return all(_LAYER_RE.search(n) for n in names)


def _heads(y: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, h·hd) → (B, h, T, hd)."""
    return y.view(*y.shape[:-1], -1, head_dim).transpose(1, 2)


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF ``cos``/``sin`` (B or 1, T, hd) → (B or 1, 1, T, hd) tables for :func:`_rope`.

    HF rotates with ``x·cos + rotate_half(x)·sin``, ``rotate_half(x) = [-x₂, x₁]``; that equals
    ``roll(x, hd/2)·[-sin₁, sin₂]``, one roll instead of a slice, negation and concatenation.
    """
    half = sin.shape[-1] // 2
    signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos.unsqueeze(1), signed.unsqueeze(1)


def _rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``x`` (B, h, T, hd) with tables from :func:`_rope_tables`."""
    cos, signed_sin = rope
    return (x * cos).addcmul_(x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def _proj(module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; without grad, a peft LoRA Linear runs as one matmul with merged adapters."""
    lora_a = getattr(module, "lora_A", None)
    if (
        torch.is_grad_enabled()
        or lora_a is None
        or module.merged
        or module.disable_adapters
        or module.lora_variant
    ):
        return module(x)
    weight = module.base_layer.weight
    for name in module.active_adapters:
        if name in lora_a:
            weight = weight + module.get_delta_weight(name)
    return F.linear(x, weight, module.base_layer.bias)


def _qkv(attn, x, rope, *, with_q: bool = True):
    hd = attn.head_dim
    k = _rope(_heads(_proj(attn.k_proj, x), hd), rope)
    v = _heads(_proj(attn.v_proj, x), hd)
    q = _rope(_heads(_proj(attn.q_proj, x), hd), rope) if with_q else None
    return q, k, v


def _attend(attn, q, k, v, mask) -> torch.Tensor:
    """Attention of ``q`` (B, h, Q, hd) over ``k``/``v`` (B, kv_h, K, hd) → (B, Q, h·hd).

    ``mask`` None means causal with Q == K; else a bool mask broadcastable to (B, h, Q, K).
    """
    k = repeat_kv(k, attn.num_key_value_groups)
    v = repeat_kv(v, attn.num_key_value_groups)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scaling
    )
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _attend_few(attn, q, k, v, mask) -> torch.Tensor:
    """:func:`_attend` for a few queries per row, written out (as HF eager attention) so that
    backward computes only the gradients that are needed (often just the values')."""
    k = repeat_kv(k, attn.num_key_value_groups)
    v = repeat_kv(v, attn.num_key_value_groups)
    (rows, heads, n_q, hd), n_k = q.shape, k.shape[2]
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -torch.inf)
    scores = torch.baddbmm(  # bias + scaling · q kᵀ, one (rows·heads)-batched matmul
        bias.expand(rows, heads, n_q, n_k).reshape(rows * heads, n_q, n_k),
        q.reshape(rows * heads, n_q, hd),
        k.reshape(rows * heads, n_k, hd).transpose(1, 2),
        alpha=attn.scaling,
    )
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(probs, v.reshape(rows * heads, n_k, hd)).view(rows, heads, n_q, hd)
    return out.transpose(1, 2).reshape(rows, n_q, -1)


def _residual(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``h + y``, written into ``y`` (a fresh temporary) when autograd is off."""
    return h + y if torch.is_grad_enabled() else y.add_(h)


def _mlp_block(layer, h: torch.Tensor) -> torch.Tensor:
    mlp, x = layer.mlp, layer.post_attention_layernorm(h)
    gate, up = mlp.act_fn(_proj(mlp.gate_proj, x)), _proj(mlp.up_proj, x)
    gate = gate * up if torch.is_grad_enabled() else gate.mul_(up)
    return _residual(h, _proj(mlp.down_proj, gate))


def _full_layer(layer, h, rope) -> torch.Tensor:
    """One decoder layer on every position of right-padded rows (causal, no mask needed)."""
    attn = layer.self_attn
    q, k, v = _qkv(attn, layer.input_layernorm(h), rope)
    return _mlp_block(layer, _residual(h, _proj(attn.o_proj, _attend(attn, q, k, v, None))))


def _prefix_ropes(dec, hp: torch.Tensor, hs: torch.Tensor):
    """Rotary tables of the prefix (positions 0 … P - 1) and of the rows' own tokens."""
    prefix, width = hp.shape[1], hp.shape[1] + hs.shape[1]
    pos = torch.arange(width, device=hs.device).unsqueeze(0)
    rope_p = _rope_tables(*dec.rotary_emb(hp, pos[:, :prefix]))
    return rope_p, _rope_tables(*dec.rotary_emb(hs, pos[:, prefix:]))


def _prefix_mask(prefix: int, own: int, device) -> torch.Tensor:
    """(S, P + S) bool: own token i (absolute position P + i) sees keys 0 … P + i."""
    keys = torch.arange(prefix + own, device=device)
    return keys <= (prefix + torch.arange(own, device=device)).unsqueeze(1)


def _split_layer_rest(layer, parts, queries, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and MLP of ``layer`` on prefix-split rows, given their queries and keys/values.

    ``parts`` (1, P, H) and (B, S, H); ``queries`` (1, h, P, hd) and (B, h, S, hd); ``k``/``v``
    (B, kv_h, P + S, hd) with the prefix's entries equal in every row. Under ``no_grad``.
    """
    (hp, hs), (qp, qs), attn = parts, queries, layer.self_attn
    prefix = hp.shape[1]
    mask = _prefix_mask(prefix, hs.shape[1], hs.device)
    kp, vp = k[:1, :, :prefix], v[:1, :, :prefix]
    hp = _mlp_block(layer, _residual(hp, _proj(attn.o_proj, _attend(attn, qp, kp, vp, None))))
    hs = _mlp_block(layer, _residual(hs, _proj(attn.o_proj, _attend(attn, qs, k, v, mask))))
    return hp, hs


def _shared_prefix_layers(layers, ropes, hp, hs):
    """Run ``layers`` on rows that share a prefix, computing the prefix once.

    Parameters
    ----------
    ropes : tuple
        From :func:`_prefix_ropes`.
    hp : (1, P, H)
        Hidden states of the prefix (equal in every row).
    hs : (B, S, H)
        Hidden states of each row's own tokens (absolute positions P … P + S - 1).

    Returns
    -------
    (hp, hs)
        The same parts after ``layers``. Call under ``torch.no_grad``.
    """
    for layer in layers:
        attn = layer.self_attn
        qp, kp, vp = _qkv(attn, layer.input_layernorm(hp), ropes[0])
        qs, ks, vs = _qkv(attn, layer.input_layernorm(hs), ropes[1])
        k, v = _join((kp, ks), dim=2), _join((vp, vs), dim=2)
        hp, hs = _split_layer_rest(layer, (hp, hs), (qp, qs), k, v)
    return hp, hs


def _join(parts: tuple[torch.Tensor, torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Prefix (1 or B, …, P, …) and rows (B, …, S, …) → (B, …, P + S, …), tokens on ``dim``."""
    hp, hs = parts
    return torch.cat([hp.expand(hs.shape[0], *hp.shape[1:]), hs], dim=dim)


def _common_prefix(ids: torch.Tensor) -> int:
    """Length of the token prefix shared by every row, leaving each row ≥ 1 own token."""
    same = (ids == ids[:1]).all(dim=0)
    differ = (~same).nonzero()
    return int(differ[0, 0]) if len(differ) else ids.shape[1] - 1


def _loss_slots(labels: torch.Tensor, task: Task) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, Q) positions whose logits enter the loss, and (B, Q) next-token targets (SeqRec)."""
    if task is Task.CTR:
        return answer_positions(labels).unsqueeze(1), None
    shifted = labels[:, 1:]
    valid = shifted != IGNORE_INDEX
    width = max(int(valid.sum(1).max()), 1)
    # valid positions first, in order (stable sort of 0 = valid before 1 = not)
    qpos = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :width]
    targets = torch.gather(shifted, 1, qpos)  # -100 in the padding slots
    # padding slots repeat the first valid position (their loss is ignored) instead of
    # pointing into the prompt
    return torch.where(targets == IGNORE_INDEX, qpos[:, :1], qpos), targets


def _gather_rows(x: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """(B or 1, T, D) at (B, Q) positions → (B, Q, D)."""
    rows = torch.arange(qpos.shape[0], device=qpos.device).unsqueeze(1)
    return x.expand(qpos.shape[0], -1, -1)[rows, qpos]


def _hooks_inside(module, hooked: set[int]) -> bool:
    return any(id(m) in hooked for m in module.modules())


def _linear_rows(module, xp: torch.Tensor, xs: torch.Tensor, hooked: set[int]) -> torch.Tensor:
    """``module`` on the rows ``_join((xp, xs))`` (B, P + S, out), sharing the prefix's work.

    ``module`` is a Linear or a peft LoRA Linear; ``hooked`` holds the ids of the modules whose
    per-row inputs/outputs the caller captures (the gradient targets). Without one inside,
    the prefix ``xp`` (1, P, in) runs once; with only a vanilla LoRA ``lora_B`` hooked, the
    prefix runs once through the base layer and ``lora_A`` and ``lora_B`` runs on every row
    (one call, so its hook sees every row once; the LoRA scaling is applied to its input,
    which leaves its per-sample gradient unchanged); anything else runs on the joined rows.
    """
    if not _hooks_inside(module, hooked):
        return _join((module(xp), module(xs)))
    lora_a = getattr(module, "lora_A", None)
    active = [n for n in getattr(module, "active_adapters", ()) if lora_a and n in lora_a]
    if (
        lora_a is None
        or module.merged
        or module.disable_adapters
        or any(n in module.lora_variant or id(lora_a[n]) in hooked for n in active)
    ):
        return module(_join((xp, xs)))
    y = _join((module.base_layer(xp), module.base_layer(xs)))
    for name in active:
        down = [
            lora_a[name](
                module.lora_dropout[name](module._cast_input_dtype(x, lora_a[name].weight.dtype))
            )
            for x in (xp, xs)
        ]
        y = y + module.lora_B[name](_join(tuple(down)) * module.scaling[name])
    return y


def _gather_parts(parts: tuple[torch.Tensor, torch.Tensor], qpos: torch.Tensor) -> torch.Tensor:
    """:func:`_gather_rows` of ``_join(parts)`` without joining when ``qpos`` is past the prefix."""
    prefix = parts[0].shape[1]
    if int(qpos.min()) >= prefix:
        return _gather_rows(parts[1], qpos - prefix)
    return _gather_rows(_join(parts), qpos)


def _last_layer_parts(layer, ropes, parts, qpos, hooked: set[int], *, with_hidden: bool):
    """:func:`_last_layer` on the prefix-split hidden states of :func:`_shared_prefix_layers`:
    the norm, keys and values of the shared prefix computed once (values per row only when
    their LoRA holds a gradient target), and reused by the hidden-states pass.

    Returns
    -------
    (out_q, out_all)
        The layer output at ``qpos`` (B, Q, H) and, if ``with_hidden``, at every position
        (B, P + S, H) without grad (else None).
    """
    attn, (rope_p, rope_s), hd = layer.self_attn, ropes, layer.self_attn.head_dim
    xp, xs = (layer.input_layernorm(x) for x in parts)
    if _hooks_inside(attn.k_proj, hooked):
        rope_all = tuple(_join(tables, dim=2) for tables in zip(rope_p, rope_s))
        k = _rope(_heads(_linear_rows(attn.k_proj, xp, xs, hooked), hd), rope_all)
    else:  # the prefix's keys once
        k = _join(tuple(_rope(_heads(attn.k_proj(x), hd), r) for x, r in zip((xp, xs), ropes)), 2)
    v = _heads(_linear_rows(attn.v_proj, xp, xs, hooked), hd)
    rope_q = tuple(
        _gather_parts((tp.squeeze(1), ts.squeeze(1)), qpos).unsqueeze(1)
        for tp, ts in zip(rope_p, rope_s)
    )
    q = _rope(_heads(attn.q_proj(_gather_parts((xp, xs), qpos)), hd), rope_q)
    keys = torch.arange(k.shape[2], device=k.device)
    mask = (keys.view(1, 1, -1) <= qpos.unsqueeze(-1)).unsqueeze(1)  # (B, 1, Q, T)
    out_q = _gather_parts(parts, qpos) + attn.o_proj(_attend_few(attn, q, k, v, mask))
    out_all = None
    if with_hidden:
        with torch.no_grad():
            queries = tuple(
                _rope(_heads(_proj(attn.q_proj, x), hd), r) for x, r in zip((xp, xs), ropes)
            )
            out_all = _join(_split_layer_rest(layer, parts, queries, k.detach(), v.detach()))
    return _mlp_block(layer, out_q), out_all


def _last_layer(layer, h, rope, qpos, *, with_hidden: bool):
    """Last layer with queries at ``qpos`` only; plus, if asked, every position without grad."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    _, k, v = _qkv(attn, x, rope, with_q=False)
    rope_q = tuple(_gather_rows(t.squeeze(1), qpos).unsqueeze(1) for t in rope)
    q = _rope(_heads(attn.q_proj(_gather_rows(x, qpos)), attn.head_dim), rope_q)
    keys = torch.arange(h.shape[1], device=h.device)
    mask = (keys.view(1, 1, -1) <= qpos.unsqueeze(-1)).unsqueeze(1)  # (B, 1, Q, T)
    out_q = _gather_rows(h, qpos) + attn.o_proj(_attend_few(attn, q, k, v, mask))
    out_q = _mlp_block(layer, out_q)
    out_all = None
    if with_hidden:
        with torch.no_grad():
            q_all = _rope(_heads(_proj(attn.q_proj, x), attn.head_dim), rope)
            o_all = _attend(attn, q_all, k.detach(), v.detach(), None)
            out_all = _mlp_block(layer, h + _proj(attn.o_proj, o_all))
    return out_q, out_all


def llama_losses(
    model,
    batch: dict[str, torch.Tensor],
    names: list[str],
    task: Task,
    token_ids: torch.Tensor | None,
    *,
    with_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample losses (B,) with the autograd graph reaching every target, and hidden states.

    Parameters
    ----------
    model : PeftModel or LlamaForCausalLM
        :func:`supports_llama_forward` must hold.
    batch : dict
        ``input_ids`` and ``labels``, (B, T) int64, right-padded.
    names : list of str
        Target parameter names (their layer indices decide where autograd starts).
    task : Task
    token_ids : (2,) int64 or None
        ("No", "Yes") ids for CTR.
    with_hidden : bool
        Also return the final-norm hidden states (B, T, H) of every position (no grad).

    Returns
    -------
    (losses, hidden)
        ``losses`` (B,) float32 with grad; ``hidden`` (B, T, H) or None.
    """
    base = _base(model)
    dec, head = base.get_decoder(), base.get_output_embeddings()
    ids, labels = batch["input_ids"], batch["labels"]
    first = min(int(_LAYER_RE.search(n).group(1)) for n in names)
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    last = len(dec.layers) - 1
    with torch.no_grad():
        prefix = _common_prefix(ids) if first > 0 and ids.shape[0] > 1 else 0
        parts = None
        if prefix >= MIN_SHARED_PREFIX:
            embed = dec.embed_tokens
            parts = (embed(ids[:1, :prefix]), embed(ids[:, prefix:]))
            ropes = _prefix_ropes(dec, *parts)
            parts = _shared_prefix_layers(dec.layers[:first], ropes, *parts)
        else:
            h = dec.embed_tokens(ids)
            rope = _rope_tables(*dec.rotary_emb(h, pos))
            for layer in dec.layers[:first]:
                h = _full_layer(layer, h, rope)
    # the last layer can keep the prefix split only if nothing ran in between
    split_last = parts is not None and first == last
    with torch.enable_grad():
        qpos, targets = _loss_slots(labels, task)
        if split_last:
            modules = dict(model.named_modules())
            hooked = {id(modules[n.rpartition(".")[0]]) for n in names}
            out_q, out_all = _last_layer_parts(
                dec.layers[-1], ropes, parts, qpos, hooked, with_hidden=with_hidden
            )
        else:
            if parts is not None:  # a prefix split, then layers with autograd before the last
                h = _join(parts)
                with torch.no_grad():
                    rope = _rope_tables(*dec.rotary_emb(h, pos))
            for layer in dec.layers[first:-1]:
                h = _full_layer(layer, h, rope)
            out_q, out_all = _last_layer(dec.layers[-1], h, rope, qpos, with_hidden=with_hidden)
        final = dec.norm(out_q)
        if task is Task.CTR:
            two = head(final[:, 0])[:, token_ids.to(final.device)].float()
            losses = ctr_loss_from_logits2(two, ctr_targets(labels, token_ids))
        else:
            losses = token_loss_from_hidden(final, targets, head)
    hidden = None
    with torch.no_grad():
        if out_all is not None:
            hidden = dec.norm(out_all)
    return losses, hidden
