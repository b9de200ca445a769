"""Shared fixtures: one real local Ray cluster per test session."""

from __future__ import annotations

import os
import uuid

import pytest

from goracs_ray.data.prompts import format_full_text
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.tiny import build_tiny_llm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Token auth on, as Ray 2.60 has it by default, with a token of this session's own (never the
# user's ~/.ray/auth_token); Ray processes and `ray job` clients started by tests inherit it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (4 logical CPUs on a 2-core box, so 0.5-CPU actors never starve reads)."""
    import ray

    from goracs_ray.raycluster import ensure_ray

    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_texts():
    """Full training texts of 60 SeqRec + 20 CTR synthetic samples."""
    table = synthetic_samples(60, task="seqrec", seed=0).to_pylist()
    table += synthetic_samples(20, task="ctr", seed=1).to_pylist()
    return [format_full_text(r["instruction"], r["input"], r["output"]) for r in table]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_texts):
    """One tiny LLaMA + BPE tokenizer (HF dir) per session, shared by model and features tests."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    return build_tiny_llm(tiny_texts, out, seed=0, vocab_size=600, hidden_size=32, num_layers=2)
