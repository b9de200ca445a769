"""Interaction datasets → BIGRec / TALLRec fine-tuning samples."""

from goracs_ray.data.prompts import ALPACA_TEMPLATE, format_full_text, format_prompt
from goracs_ray.data.schema import FEATURE_COLUMNS, ITEM_SCHEMA, SAMPLE_SCHEMA, Task

__all__ = [
    "ALPACA_TEMPLATE",
    "FEATURE_COLUMNS",
    "ITEM_SCHEMA",
    "SAMPLE_SCHEMA",
    "Task",
    "format_full_text",
    "format_prompt",
]
