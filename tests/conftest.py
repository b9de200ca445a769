"""Shared fixtures: one real local Ray cluster per test session, tiny models, a tiny run config."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
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


def write_toy_recbole(folder: Path, *, n_users: int = 20, n_items: int = 40, per_user: int = 16):
    """RecBole atomic files ``toy.inter``/``toy.item``: 20 users × 16 timestamped ratings."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        stamps = np.sort(rng.choice(10_000, size=per_user, replace=False)) + 1_000_000
        for it, ts in zip(items, stamps):
            rows.append((f"u{u}", f"i{it:02d}", int(rng.integers(1, 6)), int(ts)))
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "toy.inter", sep="\t", index=False)
    items = pd.DataFrame(
        {
            "item_id:token": [f"i{i:02d}" for i in range(n_items)],
            "title:token_seq": [f"Film number {i}" for i in range(n_items)],
        }
    )
    items.to_csv(folder / "toy.item", sep="\t", index=False)
    return folder


def toy_run_config(root: Path) -> dict:
    """A run config small enough for CI: 96 train samples, 1-layer model, 1 epoch."""
    return {
        "run_dir": str(root / "run"),
        "data": {
            "source": {"kind": "recbole", "path": str(write_toy_recbole(root / "toy"))},
            "task": "seqrec",
            "num_negatives": 9,
        },
        "model": {
            "tiny": {
                "vocab_size": 400,
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 64,
                "pretrain_steps": 5,
            }
        },
        "features": {"max_actors": 1, "actor_cpus": 0.5},
        "select": {"budget": 16, "lam": 0.5, "max_iters": 5},
        "compare": ["random"],
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5},
        "eval": {"max_samples": 4, "num_beams": 2, "max_new_tokens": 8},
    }


@pytest.fixture(scope="session")
def make_toy_run_config():
    """:func:`toy_run_config` (test modules cannot import conftest by name)."""
    return toy_run_config
