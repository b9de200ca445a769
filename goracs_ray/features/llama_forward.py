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
  SeqRec, the last prompt token for CTR); when the targets are all in it, it keeps the prefix
  split too (its norm, keys and values computed once);
* for the default target, the last layer's v_proj ``lora_B``, the LoRA term of the values moves
  after the attention weights (Σ_t p_t · lora_B(a_t) = lora_B(Σ_t p_t · a_t)), so ``lora_B`` and
  backward see one input per (head, query) instead of one per position;
* the final hidden states at every position (for LLM embeddings) are computed only on request, by
  one extra no-grad pass of the last layer reusing its keys and values;
* queries and keys keep each head's rotary pairs (i, i + hd/2) side by side
  (:func:`_pair_order`, taken from the projection's weight rows), so the rotary embedding is one
  complex multiplication; the common permutation leaves every attention score unchanged;
* on CPU, causal attention without autograd runs in chunks of at most :data:`CPU_QUERY_BLOCK`
  queries, each over the keys it can see (torch's CPU kernel scores every key of a 32-query block).

Everything that runs without autograd merges the LoRA adapters into one matmul per projection,
normalises in fewer passes and writes its residual additions in place.

Models with the LLaMA decoder layout (LLaMA, Mistral, Qwen2, Qwen3) on one device pass the
capability check (:func:`supports_fused_forward`); it is opt-in (``grad_method: fused``) and
verified against the stock path on a run's first batch
(:class:`~goracs_ray.features.grads.CheckedGrads`).
Anything else (another layout, a sliding attention window shorter than the batch, DeepSpeed
ZeRO-3 partitioned weights) uses the stock path.
"""

from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from transformers.models.llama.modeling_llama import repeat_kv

from goracs_ray.data.schema import Task
from goracs_ray.models.lm import sliding_window, zero3_partitioned
from goracs_ray.models.losses import (
    IGNORE_INDEX,
    answer_positions,
    ctr_loss_from_logits2,
    ctr_targets,
    token_loss_from_hidden,
)
from goracs_ray.models.text import shared_prefix_length

__all__ = ["fused_forward_problem", "llama_losses", "supports_fused_forward"]

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


_LAYER_PARTS = {
    "": {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"},
    "self_attn": {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"},
    "mlp": {"gate_proj", "up_proj", "down_proj", "act_fn"},
}
"""The submodules of a decoder layer this forward calls, and the only ones it may have (a layer
with another one, e.g. Gemma-2's extra norms, computes something this forward does not)."""

_LAYER_ATTRS = {
    "self_attn": ("head_dim", "scaling", "num_key_value_groups"),
    "input_layernorm": ("weight", "variance_epsilon"),
    "post_attention_layernorm": ("weight", "variance_epsilon"),
}


def fused_forward_problem(model, names: list[str], seq_len: int | None = None) -> str | None:
    """Why this forward cannot compute ``model`` (None: it can), by a capability check of the
    modules it calls rather than by ``model_type``.

    The model must be a causal LM on plain torch (not ZeRO-3 partitioned) whose decoder has
    ``embed_tokens``, ``rotary_emb``, ``norm`` and ``layers``, each layer exactly the LLaMA
    layout (:data:`_LAYER_PARTS`, :data:`_LAYER_ATTRS`: LLaMA, Mistral, Qwen2's biases, Qwen3's
    q/k norms); every target in a decoder layer; no sliding attention window shorter than
    ``seq_len`` (any window when ``seq_len`` is None). What the check cannot see (another
    normalisation or embedding scale inside the same layout) is caught by
    :class:`goracs_ray.features.grads.CheckedGrads`, which compares the first batch with the
    stock path.
    """
    base = _base(model)
    try:
        dec = base.get_decoder()
        parts = [dec.embed_tokens, dec.rotary_emb, dec.norm, base.get_output_embeddings()]
        layers = list(dec.layers)
    except (AttributeError, TypeError, NotImplementedError) as exc:
        return f"its decoder does not have the LLaMA layout ({exc})"
    if any(p is None for p in parts) or not layers:
        return "its decoder has no embedding, rotary embedding, final norm, head or layers"
    if zero3_partitioned(base):
        return "its weights are partitioned by DeepSpeed ZeRO-3"
    for index, layer in enumerate(layers):
        for path, allowed in _LAYER_PARTS.items():
            module = layer.get_submodule(path) if path else layer
            have = {name for name, _ in module.named_children()} | (
                {"act_fn"} if hasattr(module, "act_fn") else set()
            )
            required = allowed - {"q_norm", "k_norm"}
            if not required <= have or have - allowed:
                return f"decoder layer {index}.{path or 'children'}: {sorted(have)}"
        for path, attrs in _LAYER_ATTRS.items():
            if not all(hasattr(layer.get_submodule(path), a) for a in attrs):
                return f"decoder layer {index}.{path} lacks one of {attrs}"
    window = sliding_window(base.config)
    if window is not None and (seq_len is None or seq_len > window):
        return f"its sliding attention window ({window}) is shorter than the batch"
    if not all(_LAYER_RE.search(n) for n in names):
        return "a target is outside the decoder layers"
    return None


def supports_fused_forward(model, names: list[str], seq_len: int | None = None) -> bool:
    """True if :func:`fused_forward_problem` finds none."""
    return fused_forward_problem(model, names, seq_len) is None


def _heads(y: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, h·hd) → (B, h, T, hd)."""
    return y.view(*y.shape[:-1], y.shape[-1] // head_dim, head_dim).transpose(1, 2)


@functools.lru_cache(maxsize=32)
def _pair_order(features: int, head_dim: int, device: torch.device) -> torch.Tensor:
    """(features,) int64 order of a query/key projection's outputs that puts every head's rotary
    pairs side by side: ``[0, hd/2, 1, hd/2 + 1, …]`` within each head.

    HF rotates feature i of a head together with feature i + hd/2; side by side, each pair is one
    complex number and the rotation one complex multiplication (:func:`_rope`). Queries and keys
    are both kept in this order, which leaves every attention score q·k unchanged.
    """
    half = head_dim // 2
    within = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).reshape(-1)
    return (torch.arange(0, features, head_dim).unsqueeze(1) + within).reshape(-1).to(device)


def _in_pair_order(y: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Projection outputs ``y`` (…, h·hd) in HF order → a copy in :func:`_pair_order`."""
    return y.index_select(-1, _pair_order(y.shape[-1], head_dim, y.device))


def _rotary_heads(attn, y: torch.Tensor, rope: torch.Tensor, norm: str) -> torch.Tensor:
    """Rotated query or key heads (B, h, T, hd) of a projection ``y`` (B, T, h·hd) whose features
    are in :func:`_pair_order`; through the attention's per-head RMSNorm first when it has one
    (Qwen3's ``q_norm`` / ``k_norm``, its weight taken in the same order)."""
    hd = attn.head_dim
    heads = y.view(*y.shape[:-1], y.shape[-1] // hd, hd)
    norm_module = getattr(attn, norm, None)
    if norm_module is not None:
        weight = norm_module.weight[_pair_order(hd, hd, y.device)]
        eps = norm_module.variance_epsilon
        heads = F.rms_norm(heads.float(), (hd,), eps=eps).to(heads.dtype) * weight
    return _rope(heads, rope).transpose(1, 2)


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` of a LLaMA-style RMSNorm (weight · x / √(mean x² + eps), in float32 or wider),
    in three passes over ``x`` and one new tensor where no gradient flows through it."""
    if torch.is_grad_enabled() and (x.requires_grad or norm.weight.requires_grad):
        return norm(x)
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    mean_square = torch.linalg.vector_norm(wide, dim=-1, keepdim=True).square_() / x.shape[-1]
    normed = (wide * mean_square.add_(norm.variance_epsilon).rsqrt_()).to(x.dtype)
    return normed.mul_(norm.weight) if norm.weight.dtype == x.dtype else norm.weight * normed


def _rope_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF ``cos``/``sin`` (B or 1, T, hd) → complex table (B or 1, T, 1, hd/2) for :func:`_rope`.

    HF rotates ``x·cos + rotate_half(x)·sin`` with equal halves of ``cos``/``sin``: pair
    (x_i, x_{i+hd/2}) turns into (x_i + i·x_{i+hd/2}) · (cos_i + i·sin_i).
    """
    half = cos.shape[-1] // 2
    return torch.complex(cos[..., :half].float(), sin[..., :half].float()).unsqueeze(2)


def _rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of heads ``x`` (B, T, h, hd) in :func:`_pair_order`, with the table of
    :func:`_rope_table`: one complex multiplication (in float32 for half-precision ``x``)."""
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    pairs = torch.view_as_complex(wide.unflatten(-1, (x.shape[-1] // 2, 2)))
    # the table spelled out over the heads: one long contiguous inner loop (2× faster than
    # broadcasting hd/2 numbers at a time)
    table = table.expand(-1, -1, x.shape[2], -1).contiguous()
    return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)


def _proj(module, x: torch.Tensor, head_dim: int | None = None) -> torch.Tensor:
    """``module(x)`` (…, out), its features in :func:`_pair_order` when ``head_dim`` is given.

    Where no gradient reaches ``module``'s parameters (autograd off, or none of them trains) a
    Linear or a peft LoRA Linear runs as one matmul, adapters merged and rows in pair order.
    """
    lora_a = getattr(module, "lora_A", None)
    linear = module if lora_a is None else module.base_layer
    adapters = [] if lora_a is None else [n for n in module.active_adapters if n in lora_a]
    linears = [linear, *(m[n] for n in adapters for m in (lora_a, module.lora_B))]
    trains = torch.is_grad_enabled() and any(
        p is not None and p.requires_grad for m in linears for p in (m.weight, m.bias)
    )
    if trains or (
        lora_a is not None and (module.merged or module.disable_adapters or module.lora_variant)
    ):
        y = module(x)
        return y if head_dim is None else _in_pair_order(y, head_dim)
    weight, bias = linear.weight, linear.bias
    for name in adapters:
        weight = weight + module.get_delta_weight(name)
    if head_dim is not None:
        order = _pair_order(weight.shape[0], head_dim, weight.device)
        weight, bias = weight[order], None if bias is None else bias[order]
    return F.linear(x, weight, bias)


def _qkv(attn, x, rope):
    """Queries and keys (B, h, T, hd) in :func:`_pair_order`, values (B, kv_h, T, hd)."""
    hd = attn.head_dim
    k = _rotary_heads(attn, _proj(attn.k_proj, x, hd), rope, "k_norm")
    v = _heads(_proj(attn.v_proj, x), hd)
    q = _rotary_heads(attn, _proj(attn.q_proj, x, hd), rope, "q_norm")
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
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])


CPU_QUERY_BLOCK = 32
"""Queries per block of torch's CPU flash attention kernel at fewer than 192 queries. It scores
every key for each block, so :func:`_attend_causal` runs CPU attention in chunks of at most this
many queries, each stopping at its last key (−15 % attention time at 80–100 own tokens after a
74-token prefix; measured in docs/features.md)."""


def _attend_causal(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last Q positions → (B, Q, h·hd).

    ``q`` (B, h, Q, hd) are the queries of positions K - Q … K - 1 and ``k``/``v``
    (B or 1, kv_h, K, hd) the keys/values of positions 0 … K - 1: query i sees keys
    0 … K - Q + i. On CPU without autograd in chunks of at most :data:`CPU_QUERY_BLOCK` queries
    (with autograd, the chunks' backward passes cost more than they save).
    """
    n_q, first = q.shape[2], k.shape[2] - q.shape[2]
    chunked = q.device.type == "cpu" and not torch.is_grad_enabled()
    chunks = max(1, -(-n_q // CPU_QUERY_BLOCK)) if chunked else 1
    bounds = [n_q * i // chunks for i in range(chunks + 1)]
    outs = [
        _attend(
            attn,
            q[:, :, start:stop],
            k[:, :, : first + stop],
            v[:, :, : first + stop],
            _prefix_mask(first + start, stop - start, q.device) if first + start else None,
        )
        for start, stop in zip(bounds, bounds[1:], strict=False)
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _few_query_probs(attn, q, k, mask) -> torch.Tensor:
    """Attention weights (B·h, Q, K) of a few queries ``q`` (B, h, Q, hd) per row over ``k``,
    written out (as HF eager attention) so that backward computes only what is needed."""
    k = repeat_kv(k, attn.num_key_value_groups)
    rows, heads, n_q, _ = q.shape
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -torch.inf)
    scores = torch.matmul(q * attn.scaling, k.transpose(2, 3)).add_(bias)  # bias over heads
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs.view(rows * heads, n_q, -1)


def _attend_few(attn, q, k, v, mask) -> torch.Tensor:
    """:func:`_attend` for a few queries per row (see :func:`_few_query_probs`)."""
    probs = _few_query_probs(attn, q, k, mask)
    v = repeat_kv(v, attn.num_key_value_groups)
    rows, heads, n_q, hd = q.shape
    out = torch.bmm(probs, v.reshape(rows * heads, -1, hd)).view(rows, heads, n_q, hd)
    return out.transpose(1, 2).reshape(rows, n_q, -1)


def _attend_few_lora_values(attn, q, k, v_base, down, lora_b, mask) -> torch.Tensor:
    """:func:`_attend_few` with values ``v_base + heads(lora_b(down))``, the LoRA term applied
    after the attention weights.

    Σ_t p_t · lora_b(down_t) = lora_b(Σ_t p_t · down_t): ``lora_b`` runs on the attention-weighted
    LoRA inputs of each (head, query), (B, h·Q, r), instead of every position's, (B, T, r), and
    each head keeps its own block of the output. Its per-sample weight gradient (the hooks'
    Σ δ ⊗ input) is unchanged, and backward never touches the T positions.

    Parameters
    ----------
    q : (B, h, Q, hd)
    k, v_base : (B, kv_h, T, hd)
    down : (B, T, r)
        Scaled LoRA inputs of ``lora_b`` (``scaling · lora_A(x)``) at every position.
    lora_b : nn.Linear
        r → kv_h · hd.
    """
    probs = _few_query_probs(attn, q, k, mask)  # (B·h, Q, T)
    groups = attn.num_key_value_groups
    rows, heads, n_q, hd = q.shape
    v_base = repeat_kv(v_base, groups)
    out = torch.bmm(probs, v_base.reshape(rows * heads, -1, hd)).view(rows, heads, n_q, hd)
    mixed = torch.bmm(probs.view(rows, heads * n_q, -1), down)  # (B, h·Q, r)
    blocks = lora_b(mixed).view(rows, heads, n_q, heads // groups, hd)
    head = torch.arange(heads, device=q.device)
    lora = blocks[:, head, :, head // groups]  # each head's own block → (h, B, Q, hd)
    out = out + lora.permute(1, 0, 2, 3)
    return out.transpose(1, 2).reshape(rows, n_q, -1)


def _residual(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``h + y``, written into ``y`` (a fresh temporary) when autograd is off."""
    return h + y if torch.is_grad_enabled() else y.add_(h)


def _mlp_block(layer, h: torch.Tensor) -> torch.Tensor:
    mlp, x = layer.mlp, _rms_norm(layer.post_attention_layernorm, h)
    gate, up = mlp.act_fn(_proj(mlp.gate_proj, x)), _proj(mlp.up_proj, x)
    gate = gate * up if torch.is_grad_enabled() else gate.mul_(up)
    return _residual(h, _proj(mlp.down_proj, gate))


def _full_layer(layer, h, rope) -> torch.Tensor:
    """One decoder layer on every position of right-padded rows (causal, no mask needed)."""
    attn = layer.self_attn
    q, k, v = _qkv(attn, _rms_norm(layer.input_layernorm, h), rope)
    return _mlp_block(layer, _residual(h, _proj(attn.o_proj, _attend_causal(attn, q, k, v))))


def _prefix_ropes(dec, hp: torch.Tensor, hs: torch.Tensor):
    """Rotary tables (:func:`_rope_table`) of the prefix (positions 0 … P - 1) and of the rows'
    own tokens."""
    prefix, width = hp.shape[1], hp.shape[1] + hs.shape[1]
    pos = torch.arange(width, device=hs.device).unsqueeze(0)
    rope_p = _rope_table(*dec.rotary_emb(hp, pos[:, :prefix]))
    return rope_p, _rope_table(*dec.rotary_emb(hs, pos[:, prefix:]))


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
    kp, vp = k[:1, :, :prefix], v[:1, :, :prefix]
    hp = _mlp_block(layer, _residual(hp, _proj(attn.o_proj, _attend_causal(attn, qp, kp, vp))))
    hs = _mlp_block(layer, _residual(hs, _proj(attn.o_proj, _attend_causal(attn, qs, k, v))))
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
        qp, kp, vp = _qkv(attn, _rms_norm(layer.input_layernorm, hp), ropes[0])
        qs, ks, vs = _qkv(attn, _rms_norm(layer.input_layernorm, hs), ropes[1])
        k, v = _join((kp, ks), dim=2), _join((vp, vs), dim=2)
        hp, hs = _split_layer_rest(layer, (hp, hs), (qp, qs), k, v)
    return hp, hs


def _join(parts: tuple[torch.Tensor, torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Prefix (1 or B, …, P, …) and rows (B, …, S, …) → (B, …, P + S, …), tokens on ``dim``."""
    hp, hs = parts
    return torch.cat([hp.expand(hs.shape[0], *hp.shape[1:]), hs], dim=dim)


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


def _hooked_lora_b(module, hooked: set[int]) -> str | None:
    """The adapter name if the only hooked module inside ``module`` is the ``lora_B`` of its one
    active vanilla LoRA adapter (the default target), else None."""
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or module.merged or module.disable_adapters:
        return None
    active = [n for n in module.active_adapters if n in lora_a]
    if len(active) != 1 or active[0] in module.lora_variant:
        return None
    inside = {id(m) for m in module.modules()} & hooked
    return active[0] if inside == {id(module.lora_B[active[0]])} else None


def _lora_down(module, name: str, xp: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """``scaling · lora_A(x)`` (B, P + S, r) on the rows ``[xp, xs]``, the prefix once (dropout is
    the identity in eval mode). The scaling sits on ``lora_B``'s input, which leaves its
    per-sample gradient (Σ δ ⊗ input, δ taken at its output) unchanged."""
    lora_a = module.lora_A[name]
    down = (
        lora_a(module.lora_dropout[name](module._cast_input_dtype(x, lora_a.weight.dtype)))
        for x in (xp, xs)
    )
    return _join(tuple(down)) * module.scaling[name]


def _linear_rows(module, xp: torch.Tensor, xs: torch.Tensor, hooked: set[int]) -> torch.Tensor:
    """``module`` on the rows ``_join((xp, xs))`` (B, P + S, out), sharing the prefix's work.

    ``module`` is a Linear or a peft LoRA Linear; ``hooked`` holds the ids of the modules whose
    per-row inputs/outputs the caller captures (the gradient targets). Without one inside,
    the prefix ``xp`` (1, P, in) runs once; with only a LoRA ``lora_B`` hooked
    (:func:`_hooked_lora_b`), the prefix runs once through the base layer and ``lora_A`` and
    ``lora_B`` runs on every row (one call: its hook sees every row once); anything else runs
    on the joined rows.
    """
    if not _hooks_inside(module, hooked):
        return _join((module(xp), module(xs)))
    name = _hooked_lora_b(module, hooked)
    if name is None:
        return module(_join((xp, xs)))
    base = _join((module.base_layer(xp), module.base_layer(xs)))
    return base + module.lora_B[name](_lora_down(module, name, xp, xs))


def _gather_parts(parts: tuple[torch.Tensor, torch.Tensor], qpos: torch.Tensor) -> torch.Tensor:
    """:func:`_gather_rows` of ``_join(parts)`` without joining when ``qpos`` is past the prefix."""
    prefix = parts[0].shape[1]
    if int(qpos.min()) >= prefix:
        return _gather_rows(parts[1], qpos - prefix)
    return _gather_rows(_join(parts), qpos)


def _last_layer(layer, ropes, parts, qpos, hooked: set[int], *, with_hidden: bool):
    """The last layer with queries at ``qpos`` only, on prefix-split hidden states (those of
    :func:`_shared_prefix_layers`, or whole rows with an empty prefix): the norm, keys and values
    of the shared prefix computed once (values per row only when their LoRA holds a gradient
    target other than :func:`_hooked_lora_b`'s), and reused by the hidden-states pass.

    Returns
    -------
    (out_q, out_all)
        The layer output at ``qpos`` (B, Q, H) and, if ``with_hidden``, at every position
        (B, P + S, H) without grad (else None).
    """
    attn, hd = layer.self_attn, layer.self_attn.head_dim
    xp, xs = (_rms_norm(layer.input_layernorm, x) for x in parts)
    if _hooks_inside(attn.k_proj, hooked):
        k = _in_pair_order(_linear_rows(attn.k_proj, xp, xs, hooked), hd)
        k = _rotary_heads(attn, k, _join(ropes), "k_norm")
    else:  # the prefix's keys once
        k = (
            _rotary_heads(attn, _proj(attn.k_proj, x, hd), r, "k_norm")
            for x, r in zip((xp, xs), ropes)
        )
        k = _join(tuple(k), dim=2)
    rope_q = _gather_parts(tuple(r.squeeze(2) for r in ropes), qpos).unsqueeze(2)
    q = _proj(attn.q_proj, _gather_parts((xp, xs), qpos), hd)
    q = _rotary_heads(attn, q, rope_q, "q_norm")
    keys = torch.arange(k.shape[2], device=k.device)
    mask = (keys.view(1, 1, -1) <= qpos.unsqueeze(-1)).unsqueeze(1)  # (B, 1, Q, T)
    lora_v, v_proj = _hooked_lora_b(attn.v_proj, hooked), attn.v_proj
    if lora_v is None:
        v = _heads(_linear_rows(v_proj, xp, xs, hooked), hd)
        attended = _attend_few(attn, q, k, v, mask)
    else:  # the default target: base values (prefix once) + LoRA after the attention weights
        v = _join(tuple(_heads(v_proj.base_layer(x), hd) for x in (xp, xs)), dim=2)
        down = _lora_down(v_proj, lora_v, xp, xs)
        attended = _attend_few_lora_values(attn, q, k, v, down, v_proj.lora_B[lora_v], mask)
    out_q = _gather_parts(parts, qpos) + attn.o_proj(attended)
    out_all = None
    if with_hidden:
        with torch.no_grad():
            if lora_v is not None:
                v = v + _heads(v_proj.lora_B[lora_v](down), hd)
            queries = tuple(
                _rotary_heads(attn, _proj(attn.q_proj, x, hd), r, "q_norm")
                for x, r in zip((xp, xs), ropes)
            )
            out_all = _join(_split_layer_rest(layer, parts, queries, k.detach(), v.detach()))
    return _mlp_block(layer, out_q), out_all


def llama_losses(
    model,
    batch: dict[str, torch.Tensor],
    names: list[str],
    task: Task,
    token_ids: torch.Tensor | None,
    owners: list[torch.nn.Module],
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
    owners : list of nn.Module
        The modules holding the targets, whose inputs/outputs the caller hooks (their prefix
        work is shared only where their per-row hooks allow it).
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
        prefix = shared_prefix_length(ids) if first > 0 else 0
        parts = None
        if prefix:
            embed = dec.embed_tokens
            parts = (embed(ids[:1, :prefix]), embed(ids[:, prefix:]))
            ropes = _prefix_ropes(dec, *parts)
            parts = _shared_prefix_layers(dec.layers[:first], ropes, *parts)
        else:
            h = dec.embed_tokens(ids)
            rope = _rope_table(*dec.rotary_emb(h, pos))
            for layer in dec.layers[:first]:
                h = _full_layer(layer, h, rope)
    with torch.enable_grad():
        if parts is None or first < last:  # the last layer sees whole rows: an empty prefix
            if parts is not None:
                h = _join(parts)
                with torch.no_grad():
                    rope = _rope_table(*dec.rotary_emb(h, pos))
            for layer in dec.layers[first:-1]:
                h = _full_layer(layer, h, rope)
            parts = h[:1, :0], h
            with torch.no_grad():
                ropes = _prefix_ropes(dec, *parts)
        hooked = {id(m) for m in owners}
        qpos, targets = _loss_slots(labels, task)
        out_q, out_all = _last_layer(
            dec.layers[-1], ropes, parts, qpos, hooked, with_hidden=with_hidden
        )
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
