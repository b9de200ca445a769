"""Per-sample losses of a causal LM: SeqRec token loss and the CTR Yes/No loss (METHOD.md §6–7).

Every function returns one value per sample (shape ``(B,)``), never a batch mean, so the sum over
the batch has per-sample gradients equal to each sample's own loss gradient. The ``logits``
variants use no data-dependent shapes and work under ``torch.func.vmap`` on one sample
(``B = 1`` inside the vmapped function); the ``hidden`` variants evaluate the LM head only where
it is needed (the answer tokens), which is much cheaper for long prompts.

Convention: ``labels`` are the input ids with ``-100`` where no loss is taken (padding and, by
default, the prompt); position ``t`` of ``logits`` predicts token ``t + 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

__all__ = [
    "IGNORE_INDEX",
    "answer_positions",
    "causal_lm_loss",
    "causal_lm_loss_from_hidden",
    "ctr_logits",
    "ctr_logits_from_hidden",
    "ctr_loss",
    "ctr_loss_from_logits2",
    "ctr_targets",
    "ctr_token_ids",
    "loss_window",
    "token_loss_from_hidden",
]

IGNORE_INDEX = -100
"""Label value of tokens that carry no loss."""


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's unmasked tokens.

    Parameters
    ----------
    logits : (B, T, V) float
    labels : (B, T) int64, ``-100`` where ignored

    Returns
    -------
    (B,) float
        ``loss_i = Σ_t CE(logits[i, t], labels[i, t+1]) / #{t : labels[i, t+1] ≠ -100}``
        (0 for a sample without any unmasked token). vmap-safe.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    safe = torch.where(mask, shift_labels, torch.zeros_like(shift_labels))
    logz = torch.logsumexp(shift_logits, dim=-1)
    picked = torch.gather(shift_logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    maskf = mask.to(logz.dtype)
    return ((logz - picked) * maskf).sum(-1) / maskf.sum(-1).clamp_min(1.0)


def causal_lm_loss_from_hidden(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """:func:`causal_lm_loss` from final hidden states, applying ``head`` only at loss positions.

    Parameters
    ----------
    hidden : (B, T, H) float
        Final-norm hidden states (the LM head's input).
    labels : (B, T) int64
    head : callable
        The LM head, ``(P, H) → (P, V)``.

    Returns
    -------
    (B,) float
        Equal to ``causal_lm_loss(head(hidden), labels)``; not vmap-safe (dynamic shapes).
    """
    return token_loss_from_hidden(hidden[:, :-1], labels[:, 1:], head)


def token_loss_from_hidden(
    hidden: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden[i, q])`` against ``targets[i, q]`` over valid slots.

    Parameters
    ----------
    hidden : (B, Q, H) float
        Hidden states whose logits predict ``targets`` (slot ``q`` predicts ``targets[:, q]``).
    targets : (B, Q) int64
        Next-token ids, ``-100`` for slots without loss.
    head : callable
        The LM head, ``(P, H) → (P, V)``; applied to the valid slots only.

    Returns
    -------
    (B,) float
        Per-sample mean over valid slots (0 for a sample without any).
    """
    mask = targets != IGNORE_INDEX
    rows = mask.nonzero(as_tuple=True)[0]
    logits = head(hidden[mask]).float()
    ce = F.cross_entropy(logits, targets[mask], reduction="none")
    total = torch.zeros(targets.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    return total / mask.sum(-1).clamp_min(1).to(ce.dtype)


def ctr_token_ids(tokenizer) -> torch.Tensor:
    """Token ids ``[no_id, yes_id]`` of the CTR answers ``"No"`` and ``"Yes"`` (no leading space).

    The answer follows ``"### Response:\\n"``, so it is tokenised without a leading space. Column
    order (No, Yes) makes the class index equal the label (1 = like = "Yes").

    Raises
    ------
    ValueError
        If either answer is not a single token of ``tokenizer``.
    """
    ids = []
    for word in ("No", "Yes"):
        enc = tokenizer.encode(word, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(
                f"`tokenizer` splits {word!r} into {len(enc)} tokens {enc}; CTR needs single-token "
                "answers (tiny models from goracs_ray.models.tiny guarantee it)"
            )
        ids.append(enc[0])
    return torch.tensor(ids, dtype=torch.int64)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Index of the position whose logits predict the first answer token (the last prompt token).

    Parameters
    ----------
    labels : (B, T) int64

    Returns
    -------
    (B,) int64
        ``first t with labels[i, t] ≠ -100`` minus 1 (vmap-safe).
    """
    first = (labels != IGNORE_INDEX).to(torch.int64).argmax(-1)
    return (first - 1).clamp_min(0)


def loss_window(labels: torch.Tensor) -> int:
    """Number ``K`` of final positions whose logits every loss of the batch reads.

    With right padding the answer sits at the end of each sample, so a model called with
    ``logits_to_keep=K`` (transformers' public forward argument) computes the LM head on ``K``
    positions instead of ``T``; slice the labels alike (``labels[:, -K:]``) and
    :func:`causal_lm_loss`, :func:`ctr_loss` and :func:`answer_positions` give the same values as
    on the full sequence. The window starts at the last prompt token of the sample whose answer
    starts earliest.

    Parameters
    ----------
    labels : (B, T) int64

    Returns
    -------
    int
        In ``[1, T]``; ``T`` when no label is set (nothing to save).
    """
    seq_len = int(labels.shape[1])
    has = labels != IGNORE_INDEX
    rows = has.any(dim=1)
    if not bool(rows.any()):
        return seq_len
    first = has.to(torch.int64).argmax(dim=1)[rows].min()
    return min(seq_len, seq_len - int(first) + 1)


def ctr_targets(labels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """(B,) int64 class of each sample: 1 if its first answer token is ``"Yes"``, else 0."""
    first = answer_positions(labels) + 1
    tok = torch.gather(labels, 1, first.unsqueeze(1)).squeeze(1)
    return (tok == token_ids[1]).to(torch.int64)


def ctr_logits(logits: torch.Tensor, labels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """(B, 2) logits of ("No", "Yes") at the last prompt token, from full ``(B, T, V)`` logits."""
    pos = answer_positions(labels)
    idx = pos.view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    last = torch.gather(logits, 1, idx).squeeze(1)
    return last[:, token_ids.to(logits.device)].float()


def ctr_logits_from_hidden(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    token_ids: torch.Tensor,
) -> torch.Tensor:
    """(B, 2) ("No", "Yes") logits from hidden states ``(B, T, H)``, applying ``head`` at one
    position per sample (the module is called, so DeepSpeed ZeRO-3 can gather its weight)."""
    pos = answer_positions(labels)
    idx = pos.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    last = torch.gather(hidden, 1, idx).squeeze(1)
    return head(last)[:, token_ids.to(hidden.device)].float()


def ctr_loss_from_logits2(logits2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) 2-way cross-entropy of ``(B, 2)`` (No, Yes) logits against ``(B,)`` int64 targets."""
    logz = torch.logsumexp(logits2, dim=-1)
    picked = torch.gather(logits2, 1, targets.view(-1, 1)).squeeze(1)
    return logz - picked


def ctr_loss(logits: torch.Tensor, labels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """(B,) TALLRec loss: softmax over the "No"/"Yes" logits only, target from the labels."""
    logits2 = ctr_logits(logits, labels, token_ids)
    return ctr_loss_from_logits2(logits2, ctr_targets(labels, token_ids))
