"""Turn (prompt, output) pairs into padded causal-LM batches with loss labels."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

from goracs_ray.models.losses import IGNORE_INDEX

__all__ = [
    "MIN_SHARED_PREFIX",
    "LossOn",
    "pack_token_ids",
    "shared_prefix_length",
    "tokenize_samples",
]

MIN_SHARED_PREFIX = 8
"""Shortest common prompt prefix (tokens) worth computing once per batch."""


class LossOn(str, enum.Enum):
    """Which tokens carry the loss."""

    RESPONSE = "response"
    """Only the answer (and eos): BIGRec/TALLRec ``train_on_inputs=False``."""
    ALL = "all"
    """Prompt and answer (every non-padding token after bos)."""


def tokenize_samples(
    tokenizer,
    prompts: Sequence[str],
    outputs: Sequence[str],
    *,
    max_length: int,
    loss_on: LossOn | str = LossOn.RESPONSE,
    add_eos: bool = True,
) -> dict[str, torch.Tensor]:
    """Tokenise prompt + output per sample, right-padded, truncating the prompt from the left.

    ``ids = [bos] + prompt_ids + output_ids + [eos]``; when longer than ``max_length`` the oldest
    prompt tokens (right after bos) are dropped so the answer is kept, then (only if the answer
    alone does not fit) the answer is cut from the right.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Must have a ``pad_token_id`` (or an ``eos_token_id``, used for padding).
    prompts, outputs : sequence of str, same length B
    max_length : int
        T_max; the batch is padded to its longest sample (≤ max_length).
    loss_on : LossOn or str
        ``"response"`` (default) masks the prompt in ``labels``; ``"all"`` keeps it.
    add_eos : bool
        Append eos after the output (as in fine-tuning).

    Returns
    -------
    dict
        ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 (1 = token),
        ``labels`` (B, T) int64 with -100 on padding, bos and (by default) the prompt.
    """
    if loss_on not in {m.value for m in LossOn}:
        raise ValueError(f"`loss_on` must be one of {[m.value for m in LossOn]}, got {loss_on!r}")
    loss_on = LossOn(loss_on)
    if len(prompts) != len(outputs):
        raise ValueError(
            f"`prompts` ({len(prompts)}) and `outputs` ({len(outputs)}) differ in length"
        )
    if max_length < 3:
        raise ValueError(f"`max_length` must be ≥ 3, got {max_length}")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    if pad_id is None:
        raise ValueError(
            "`tokenizer` has neither a pad nor an eos token; set `tokenizer.pad_token`"
        )
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    o_ids = tokenizer(list(outputs), add_special_tokens=False)["input_ids"]
    return pack_token_ids(
        p_ids,
        o_ids,
        max_length=max_length,
        loss_on=loss_on,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id if add_eos else None,
        pad_id=pad_id,
    )


def pack_token_ids(
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    *,
    max_length: int,
    loss_on: LossOn | str = LossOn.RESPONSE,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """:func:`tokenize_samples` on already tokenised prompts/outputs (no special tokens).

    ``bos_id``/``eos_id`` None leave that token out. Same outputs and rules.
    """
    loss_on = LossOn(loss_on)
    bos = [bos_id] if bos_id is not None else []
    eos = [eos_id] if eos_id is not None else []
    rows, lab_rows = [], []
    for p, o in zip(prompt_ids, output_ids):
        answer = (list(o) + eos)[: max_length - len(bos) - 1]
        room = max_length - len(bos) - len(answer)
        prompt = list(p[len(p) - room :] if len(p) > room else p)
        ids = bos + prompt + answer
        n_masked = len(bos) + (len(prompt) if loss_on is LossOn.RESPONSE else 0)
        rows.append(ids)
        lab_rows.append([IGNORE_INDEX] * n_masked + ids[n_masked:])
    width = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.int64)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.int64)
    attention = torch.zeros((batch, width), dtype=torch.int64)
    for i, (ids, lab) in enumerate(zip(rows, lab_rows)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def shared_prefix_length(ids: torch.Tensor) -> int:
    """Length of the token prefix shared by every row of ``ids`` (B, T) int64, leaving each row
    ≥ 1 own token; 0 when shorter than :data:`MIN_SHARED_PREFIX` or for a single row.

    Rows of one batch share the instruction text at their start; with causal attention the
    prefix's keys, values and hidden states do not depend on what follows, so per-sample
    gradient paths compute it once per batch.
    """
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0)
    differ = (~same).nonzero()
    length = int(differ[0, 0]) if len(differ) else ids.shape[1] - 1
    return length if length >= MIN_SHARED_PREFIX else 0
