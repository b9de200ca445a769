"""Interaction datasets → BIGRec / TALLRec fine-tuning samples."""

from goracs_ray.data.config import ColumnMap, DataConfig, Domain, OnIssue, SourceConfig, SourceKind
from goracs_ray.data.fetch import fetch_ml100k
from goracs_ray.data.prepare import prepare
from goracs_ray.data.prompts import ALPACA_TEMPLATE, format_full_text, format_prompt
from goracs_ray.data.ray_io import load_samples_ray
from goracs_ray.data.schema import FEATURE_COLUMNS, ITEM_SCHEMA, SAMPLE_SCHEMA, Task

__all__ = [
    "ALPACA_TEMPLATE",
    "FEATURE_COLUMNS",
    "ITEM_SCHEMA",
    "SAMPLE_SCHEMA",
    "ColumnMap",
    "DataConfig",
    "Domain",
    "OnIssue",
    "SourceConfig",
    "SourceKind",
    "Task",
    "fetch_ml100k",
    "format_full_text",
    "format_prompt",
    "load_samples_ray",
    "prepare",
]
