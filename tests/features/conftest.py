"""Fixtures for features tests: one tiny LLaMA + BPE tokenizer per session."""

from __future__ import annotations

import pytest

from goracs_ray.data.prompts import format_full_text
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.tiny import build_tiny_llm


@pytest.fixture(scope="session")
def feat_texts():
    table = synthetic_samples(60, task="seqrec", seed=0).to_pylist()
    table += synthetic_samples(20, task="ctr", seed=1).to_pylist()
    return [format_full_text(r["instruction"], r["input"], r["output"]) for r in table]


@pytest.fixture(scope="session")
def feat_model_dir(tmp_path_factory, feat_texts):
    out = tmp_path_factory.mktemp("featmodels") / "tiny"
    return build_tiny_llm(feat_texts, out, seed=0, vocab_size=600, hidden_size=32, num_layers=2)
