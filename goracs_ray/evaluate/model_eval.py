"""Model-side evaluation, Ray-free: beam-search generation (SeqRec) and P(Yes) (CTR)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from goracs_ray.models.losses import ctr_logits, ctr_token_ids
from goracs_ray.models.text import tokenize_samples

__all__ = ["clean_generation", "generate_titles", "yes_probabilities"]


def clean_generation(text: str) -> str:
    """Generated answer → title text: first line, whitespace and surrounding quotes stripped."""
    line = text.strip().split("\n", 1)[0].strip()
    return line.strip('"').strip()


@torch.no_grad()
def generate_titles(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_beams: int,
    num_return_sequences: int,
    max_new_tokens: int,
    max_length: int,
) -> list[list[str]]:
    """Beam-search answers for B prompts; returns B lists of R cleaned titles (best beam first)."""
    device = next(model.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        enc = tokenizer(
            list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=max_length
        ).to(device)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    out = model.generate(
        **enc,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        early_stopping=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    texts = [clean_generation(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    r = num_return_sequences
    return [texts[i * r : (i + 1) * r] for i in range(len(prompts))]


@torch.no_grad()
def yes_probabilities(
    model, tokenizer, prompts: Sequence[str], outputs: Sequence[str], *, max_length: int
) -> np.ndarray:
    """P("Yes") from the softmax over the ("No", "Yes") logits after each prompt.

    ``outputs`` only locate the answer position (any of "Yes"/"No"); the score does not depend
    on them. Returns (B,) float64.
    """
    device = next(model.parameters()).device
    batch = tokenize_samples(tokenizer, prompts, outputs, max_length=max_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    two = ctr_logits(logits, batch["labels"], ctr_token_ids(tokenizer))
    return torch.softmax(two, dim=-1)[:, 1].double().cpu().numpy()
