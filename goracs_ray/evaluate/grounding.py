"""Grounding generated text to catalog items (BIGRec): L2 distance of last-token hidden states.

Both the generated text and every item title are embedded by the *base* model (adapter disabled):
the final layer's hidden state at the last real token. No Ray inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["base_model", "candidate_distances", "catalog_embeddings", "last_token_hidden"]

logger = logging.getLogger(__name__)

_MEMORY_CACHE: dict[str, np.ndarray] = {}


def base_model(model) -> contextlib.AbstractContextManager:
    """Context in which a peft model runs without its adapter (no-op for a plain model)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


@torch.no_grad()
def last_token_hidden(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int = 128,
    progress: str | None = None,
) -> np.ndarray:
    """Final-layer hidden state at each text's last token.

    Parameters
    ----------
    texts : sequence of N str
        Tokenised with the tokenizer's special tokens (bos), right-padded.
    batch_size, max_length : int

    Returns
    -------
    (N, H) float32
    """
    device = next(model.parameters()).device
    out = []
    # disable=None: tqdm's own rule, a bar on a terminal only (no bar lines in a log file)
    bar_off = True if progress is None else None
    for start in tqdm(range(0, len(texts), batch_size), desc=progress, disable=bar_off):
        chunk = [str(t) for t in texts[start : start + batch_size]]
        enc = tokenizer(
            chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        ).to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        last = enc["attention_mask"].sum(dim=1) - 1
        out.append(hidden[torch.arange(hidden.shape[0], device=device), last].float().cpu())
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def catalog_embeddings(
    model,
    tokenizer,
    titles: Sequence[str],
    *,
    model_key: str,
    batch_size: int,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Base-model embeddings of every catalog title, cached per (model, catalog).

    The cache key hashes ``model_key`` (identifies the base weights) and the titles in order; hits
    come from memory, then from ``cache_dir/item_emb_<key>.npy``.

    Returns
    -------
    (N_items, H) float32
    """
    digest = hashlib.sha256(("\n".join([model_key, *titles])).encode()).hexdigest()[:20]
    if digest in _MEMORY_CACHE:
        return _MEMORY_CACHE[digest]
    path = Path(cache_dir) / f"item_emb_{digest}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        emb = np.load(path)
        logger.info("catalog embeddings loaded from %s", path)
    else:
        with base_model(model):
            emb = last_token_hidden(
                model, tokenizer, titles, batch_size=batch_size, progress="embed catalog"
            )
        if path is not None:
            from goracs_ray.io import atomic_file

            with atomic_file(path) as part, open(part, "wb") as fh:
                np.save(fh, emb)
    _MEMORY_CACHE[digest] = emb
    return emb


def candidate_distances(pred: np.ndarray, items: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """L2 distance of each sample's candidates to its nearest generated text.

    Parameters
    ----------
    pred : (B, R, H) float32
        Embeddings of the R generated texts per sample.
    items : (N_items, H) float32
        Catalog embeddings.
    candidates : (B, C) int64
        Catalog rows of each sample's candidates (column 0 the target).

    Returns
    -------
    (B, C) float64
        ``min_r ||pred[b, r] − items[candidates[b, c]]||₂``. Memory: O(B·R·C·H) per call.
    """
    cand = items[candidates].astype(np.float64)  # (B, C, H)
    diff = cand[:, None, :, :] - pred.astype(np.float64)[:, :, None, :]  # (B, R, C, H)
    return np.sqrt((diff**2).sum(-1)).min(axis=1)
