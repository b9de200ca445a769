"""Column contracts shared by every stage (samples → features → selection → training → eval).

All artifacts are Parquet readable without this package; these schemas are the single place the
column names and types are defined.
"""

from __future__ import annotations

import enum

import pyarrow as pa

__all__ = ["FEATURES_MANIFEST", "FEATURE_COLUMNS", "ITEM_SCHEMA", "SAMPLE_SCHEMA", "Task"]


class Task(str, enum.Enum):
    """Recommendation task a sample set is built for."""

    SEQREC = "seqrec"
    """BIGRec sequential recommendation: generate the next item's title."""
    CTR = "ctr"
    """TALLRec click/like prediction: answer "Yes" or "No"."""


SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # stable: f(task, user, position)
        pa.field("task", pa.string(), nullable=False),  # Task value
        pa.field("split", pa.string(), nullable=False),  # "train" | "valid" | "test"
        pa.field("user", pa.string(), nullable=False),
        pa.field("target_item", pa.string(), nullable=False),
        pa.field("target_title", pa.string(), nullable=False),
        pa.field("history_items", pa.list_(pa.string()), nullable=False),  # oldest first
        pa.field("history_titles", pa.list_(pa.string()), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),  # '"Title"' (SeqRec) | "Yes"/"No" (CTR)
        pa.field("label", pa.int8(), nullable=True),  # CTR: 1 like / 0 not; SeqRec: null
        pa.field("timestamp", pa.int64(), nullable=False),  # target interaction, unix seconds
        pa.field("negatives", pa.list_(pa.string()), nullable=False),  # SeqRec eval negatives
    ]
)
"""One row per fine-tuning sample; ``samples/{train,valid,test}.parquet``."""

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        # "Title (1995), Animation Children's Comedy": title plus the year and genres where the
        # source has them (null otherwise); the tiny base model is pretrained on this text.
        pa.field("description", pa.string(), nullable=True),
    ]
)
"""The catalog: ``samples/items.parquet`` (grounding, the tiny model's tokenizer and pretraining).
Readers need only ``item_id`` and ``title``; ``description`` may be absent in older files."""

FEATURE_COLUMNS = {
    "sample_id": pa.string(),
    "split": pa.string(),
    "embedding": pa.list_(pa.float32()),  # (d,) sentence or LLM embedding
    "grad_norm": pa.float32(),  # L2 norm of the per-sample LoRA gradient
    "grad_proj": pa.list_(pa.float32()),  # (k,) seeded JL projection of that gradient (optional)
    "loss": pa.float32(),  # per-sample loss (EL2N-style baselines)
}
"""Columns of ``features/*.parquet``; ``grad_proj`` and ``loss`` may be absent."""

FEATURES_MANIFEST = "_manifest.json"
"""Written last into a features dir by `goracs features`: its shard list, row counts, model and
settings. The leading ``_`` makes Parquet readers (pandas, pyarrow.dataset) skip it, and readers
of the features check it (an incomplete or stale dir is refused)."""
