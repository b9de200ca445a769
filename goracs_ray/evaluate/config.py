"""`EvalConfig`: the run YAML's ``eval:`` section."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["EvalConfig", "SeqRecRanking"]


class SeqRecRanking(str, enum.Enum):
    """How SeqRec candidates are ranked (``eval.seqrec_ranking``)."""

    LIKELIHOOD = "likelihood"
    """By the model's mean answer-token log-probability of each candidate title (the negative
    fine-tuning loss); metrics ``ndcg@K``, ``hr@K``, ``mean_rank``, ``test_loss``."""
    GROUNDING = "grounding"
    """BIGRec: beam-search a title, rank candidates by embedding distance to it; metrics
    ``grounded_ndcg@K``, ``grounded_hr@K``, ``grounded_mean_rank``."""


@dataclass
class EvalConfig:
    """Test-set evaluation: likelihood and/or grounded ranking (SeqRec), or AUC (CTR).

    The model's device and dtype come from the ``model:`` section.
    """

    MOVED_KEYS: ClassVar[dict[str, str]] = {"device": "model.device"}

    seqrec_ranking: list[str] = field(
        default_factory=lambda: [SeqRecRanking.LIKELIHOOD.value, SeqRecRanking.GROUNDING.value]
    )
    """SeqRec rankings to run, a non-empty subset of ``["likelihood", "grounding"]``."""
    candidate_batch: int = 100
    """Candidate answers per forward pass of the likelihood ranking (bounds its memory)."""

    batch_size: int = 8
    """Test samples per generation / scoring batch."""
    num_beams: int = 4
    """Beam width of the SeqRec generation (BIGRec: 4)."""
    num_return_sequences: int = 1
    """Beams kept per sample; a candidate's distance is its minimum over them (≤ num_beams)."""
    max_new_tokens: int = 32
    """Cap on generated tokens (a title plus quotes)."""
    max_length: int = 512
    """Prompt token cap; longer prompts lose their oldest tokens (the left)."""
    embed_batch_size: int = 64
    """Titles per forward pass when embedding the catalog for grounding."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    """Cut-offs of NDCG@K and HR@K."""
    max_samples: int | None = None
    """Evaluate only the first this many test samples (None: all)."""
    cache_dir: str | None = None
    """Where catalog embeddings are cached across runs (None: in memory only)."""

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "num_beams",
            "num_return_sequences",
            "max_new_tokens",
            "max_length",
            "embed_batch_size",
            "candidate_batch",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`eval.{name}` must be ≥ 1, got {getattr(self, name)}")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"`eval.num_return_sequences` ({self.num_return_sequences}) must be ≤ "
                f"`eval.num_beams` ({self.num_beams})"
            )
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"`eval.ks` must be a non-empty list of K ≥ 1, got {self.ks}")
        self.ks = sorted(set(self.ks))
        allowed = [m.value for m in SeqRecRanking]
        if (
            not isinstance(self.seqrec_ranking, (list, tuple))
            or not self.seqrec_ranking
            or any(r not in allowed for r in self.seqrec_ranking)
        ):
            raise ValueError(
                f"`eval.seqrec_ranking` must be a non-empty subset of {allowed}, "
                f"got {self.seqrec_ranking!r}"
            )
        self.seqrec_ranking = [r for r in allowed if r in self.seqrec_ranking]
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"`eval.max_samples` must be ≥ 1 or null, got {self.max_samples}")
