"""Likelihood ranking of candidate answers (SeqRec), Ray-free: one prompt pass, C continuations.

The score of candidate ``c`` after prompt ``b`` is the model's mean log-probability of the answer
tokens, i.e. minus the fine-tuning loss of that (prompt, answer) pair:

.. math::

    s_{bc} = \\frac{1}{|a_c|} \\sum_{t=1}^{|a_c|} \\log p_\\theta(a_{c,t} \\mid x_b, a_{c,<t}),

with ``x_b = [bos] + prompt`` and ``a_c = answer + [eos]`` tokenised exactly as
:func:`goracs_ray.models.text.pack_token_ids` does for training (prompt cut from the left so that
bos + prompt + answer fits ``max_length``; the answer cut from the right only if it alone does
not fit). So ``-s_bc`` equals :func:`goracs_ray.models.losses.causal_lm_loss` of that sample.

The cached path runs ``x_b`` once, keeps its KV cache, expands it to ``n ≤ candidate_batch``
rows and feeds the right-padded answers with positions continuing after the prefix. Cost per
sample: one prefix pass + ``Σ_c |a_c|`` tokens, instead of ``C · (|x_b| + |a_c|)`` for the
reference full forward (``use_cache=False``), which the tests and ``benchmarks/bench_eval.py``
compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from goracs_ray.models.losses import causal_lm_loss
from goracs_ray.models.text import pack_token_ids

__all__ = ["candidate_scores"]


@torch.no_grad()
def candidate_scores(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    max_length: int,
    candidate_batch: int = 100,
    use_cache: bool = True,
) -> np.ndarray:
    """Mean answer-token log-probability of every candidate answer after its prompt.

    Parameters
    ----------
    model : PreTrainedModel or PeftModel
        A causal LM in eval mode (dropout off); runs on the device of its parameters. Any HF
        decoder whose forward takes ``cache``/``position_ids`` (LLaMA family) for the cached path.
    tokenizer : PreTrainedTokenizerBase
        Needs ``eos_token_id`` (appended to each answer) and a pad or eos id; bos is prepended
        when it has one, as in fine-tuning.
    prompts : sequence of B str
        Formatted prompts (:func:`goracs_ray.data.prompts.format_prompt`).
    candidates : sequence of B sequences of C str
        Answer texts, formatted like the training ``output`` column
        (:func:`goracs_ray.data.samples.seqrec_output` for SeqRec). Same C for every prompt.
    max_length : int
        Token cap of bos + prompt + answer + eos, as in fine-tuning (≥ 3).
    candidate_batch : int
        Candidate rows per forward pass (both paths). Memory: O(candidate_batch · T · (V + L·H))
        activations, T the longest row of the chunk (the answer alone on the cached path).
    use_cache : bool
        True: prefix KV cache reused for all candidates. False: the reference, one full forward
        of bos + prompt + answer per candidate (batched ``candidate_batch`` rows at a time).

    Returns
    -------
    (B, C) float64
        ``s[b, c] = −causal_lm_loss`` of (prompts[b], candidates[b][c]); higher = more likely.

    Raises
    ------
    ValueError
        On mismatched lengths, ragged or empty candidate lists, ``candidate_batch < 1``,
        ``max_length < 3`` or a tokenizer without an eos token.
    """
    n_cand = _check(prompts, candidates, max_length, candidate_batch)
    if tokenizer.eos_token_id is None:
        raise ValueError("`tokenizer` has no eos token; candidate answers end with eos")
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    flat = [str(c) for row in candidates for c in row]
    o_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    out = np.zeros((len(prompts), n_cand), dtype=np.float64)
    for b, prompt in enumerate(p_ids):
        answers = o_ids[b * n_cand : (b + 1) * n_cand]
        if use_cache:
            out[b] = _cached_row(model, prompt, answers, tokenizer, max_length, candidate_batch)
        else:
            for s in range(0, n_cand, candidate_batch):
                chunk = answers[s : s + candidate_batch]
                batch = pack_token_ids(
                    [prompt] * len(chunk),
                    chunk,
                    max_length=max_length,
                    bos_id=tokenizer.bos_token_id,
                    eos_id=tokenizer.eos_token_id,
                    pad_id=pad_id,
                )
                out[b, s : s + len(chunk)] = -_full_loss(model, batch)
    return out


def _check(prompts, candidates, max_length: int, candidate_batch: int) -> int:
    if len(prompts) != len(candidates):
        raise ValueError(
            f"`prompts` ({len(prompts)}) and `candidates` ({len(candidates)}) differ in length"
        )
    sizes = {len(row) for row in candidates}
    if len(sizes) > 1:
        raise ValueError(f"every prompt needs the same number of candidates, got {sorted(sizes)}")
    if sizes == {0}:
        raise ValueError("`candidates` rows are empty; give each prompt ≥ 1 candidate")
    if candidate_batch < 1:
        raise ValueError(f"`candidate_batch` must be ≥ 1, got {candidate_batch}")
    if max_length < 3:
        raise ValueError(f"`max_length` must be ≥ 3, got {max_length}")
    return sizes.pop() if sizes else 0


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _full_loss(model, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """(n,) float64 per-row causal-LM loss of a packed batch (the reference path)."""
    device = _device(model)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits
    return causal_lm_loss(logits, batch["labels"].to(device)).double().cpu().numpy()


def _cached_row(
    model,
    prompt: list[int],
    answers: list[list[int]],
    tokenizer,
    max_length: int,
    candidate_batch: int,
) -> np.ndarray:
    """(C,) float64 scores of one prompt's candidates through its prefix KV cache.

    The kept prompt tail depends on the answer length only when the prompt is truncated;
    candidates are grouped by that tail (one prefix pass per group, usually one in all).
    """
    from transformers import DynamicCache

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id
    cap = max_length - len(bos) - 1
    ans = [(list(o) + [eos])[:cap] for o in answers]  # as pack_token_ids: answer + eos, capped
    groups: dict[int, list[int]] = {}  # first kept prompt token → candidates
    for c, a in enumerate(ans):
        room = max_length - len(bos) - len(a)
        groups.setdefault(max(0, len(prompt) - room), []).append(c)
    device = _device(model)
    scores = np.zeros(len(answers), dtype=np.float64)
    for start, members in groups.items():
        prefix = torch.tensor([bos + list(prompt[start:])], dtype=torch.int64, device=device)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1).logits
        first = torch.log_softmax(logits[0, -1].float(), dim=-1)  # (V,) log p(a_1 | prefix)
        kv = [(k, v) for k, v, *_ in cache]
        for s in range(0, len(members), candidate_batch):
            rows = members[s : s + candidate_batch]
            scores[rows] = _continuations(model, kv, first, [ans[c] for c in rows])
    return scores


def _continuations(
    model, kv: list[tuple[torch.Tensor, torch.Tensor]], first: torch.Tensor, answers
) -> np.ndarray:
    """(n,) float64 mean answer log-probability of n answers after one cached prefix.

    Parameters
    ----------
    kv : list of L (keys, values), each (1, heads, P, head_dim)
        The prefix's KV cache, per layer.
    first : (V,) float32
        Log-probabilities of the first answer token (the prefix's last logits).
    answers : list of n lists of int
        Answer + eos ids, each ≥ 1 token.
    """
    device = first.device
    n, prefix_len = len(answers), kv[0][0].shape[-2]
    lengths = torch.tensor([len(a) for a in answers], dtype=torch.int64)
    width = int(lengths.max())
    ids = torch.zeros((n, width), dtype=torch.int64)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = torch.tensor(a)
    ids, lengths = ids.to(device), lengths.to(device)
    total = first[ids[:, 0]].double()  # (n,)
    if width > 1:
        steps = torch.arange(width - 1, device=device)
        valid = steps.unsqueeze(0) < (lengths - 1).unsqueeze(1)  # (n, W-1): predicts ids[:, 1:]
        mask = torch.cat(
            [torch.ones((n, prefix_len), dtype=torch.int64, device=device), valid.long()], dim=1
        )
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        for layer, (k, v) in enumerate(kv):  # batch-1 prefix → n rows (copied on first update)
            cache.update(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), layer)
        logits = model(
            input_ids=ids[:, :-1],
            attention_mask=mask,
            position_ids=(prefix_len + steps).unsqueeze(0).expand(n, -1),
            cache=cache,
            use_cache=True,
        ).logits.float()  # (n, W-1, V)
        picked = torch.gather(logits, -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        logp = picked - torch.logsumexp(logits, dim=-1)
        total = total + (logp * valid).sum(-1).double()
    return (total / lengths.double()).cpu().numpy()
