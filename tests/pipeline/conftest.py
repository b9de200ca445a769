"""A toy RecBole dataset and a tiny-everything run config for end-to-end pipeline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml


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


@pytest.fixture(scope="module")
def toy_config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(toy_run_config(root)))
    return path
