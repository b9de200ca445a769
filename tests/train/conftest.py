"""Fixtures for fine-tuning tests: one tiny LLaMA and tiny SeqRec/CTR sample files per session."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from goracs_ray.data.prompts import format_full_text
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.tiny import build_tiny_llm


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """``{task: (train.parquet, valid.parquet)}`` with 12 train and 4 valid samples per task."""
    root = tmp_path_factory.mktemp("train_samples")
    out = {}
    for task in ("seqrec", "ctr"):
        paths = []
        for split, n in (("train", 12), ("valid", 4)):
            path = root / f"{task}_{split}.parquet"
            pq.write_table(synthetic_samples(n, task=task, split=split, seed=0, n_items=50), path)
            paths.append(path)
        out[task] = tuple(paths)
    return out


@pytest.fixture(scope="session")
def train_model_dir(tmp_path_factory, train_data):
    texts = [
        format_full_text(r["instruction"], r["input"], r["output"])
        for paths in train_data.values()
        for path in paths
        for r in pq.read_table(path).to_pylist()
    ]
    out = tmp_path_factory.mktemp("train_models") / "tiny"
    return build_tiny_llm(texts, out, seed=0, vocab_size=600, hidden_size=32, num_layers=2)
