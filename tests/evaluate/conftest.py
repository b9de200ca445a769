"""Evaluation fixtures: a tiny LLaMA, a 30-item catalog and test samples with negatives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goracs_ray.data.prompts import format_full_text
from goracs_ray.data.schema import ITEM_SCHEMA
from goracs_ray.models.synthetic import synthetic_samples, synthetic_titles
from goracs_ray.models.tiny import build_tiny_llm

N_ITEMS = 30
N_NEG = 9


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    """``{"items": path, "seqrec": path, "ctr": path}``; SeqRec rows carry 9 negatives each."""
    root = tmp_path_factory.mktemp("eval_data")
    titles = synthetic_titles(N_ITEMS, seed=0)
    items = pa.table(
        {"item_id": [str(i) for i in range(N_ITEMS)], "title": titles, "description": titles},
        schema=ITEM_SCHEMA,
    )
    pq.write_table(items, root / "items.parquet")
    seq = synthetic_samples(6, task="seqrec", split="test", seed=0, n_items=N_ITEMS)
    rng = np.random.default_rng(0)
    negatives = []
    for target in seq.column("target_item").to_pylist():
        pool = [str(i) for i in range(N_ITEMS) if str(i) != target]
        negatives.append([str(x) for x in rng.choice(pool, size=N_NEG, replace=False)])
    seq = seq.set_column(
        seq.schema.get_field_index("negatives"),
        seq.schema.field("negatives"),
        pa.array(negatives, pa.list_(pa.string())),
    )
    pq.write_table(seq, root / "seqrec.parquet")
    ctr = synthetic_samples(8, task="ctr", split="test", seed=0, n_items=N_ITEMS)
    pq.write_table(ctr, root / "ctr.parquet")
    return {
        "items": root / "items.parquet",
        "seqrec": root / "seqrec.parquet",
        "ctr": root / "ctr.parquet",
    }


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory, eval_data):
    rows = (
        pq.read_table(eval_data["seqrec"]).to_pylist() + pq.read_table(eval_data["ctr"]).to_pylist()
    )
    texts = [format_full_text(r["instruction"], r["input"], r["output"]) for r in rows]
    texts += pq.read_table(eval_data["items"]).column("title").to_pylist()
    out = tmp_path_factory.mktemp("eval_models") / "tiny"
    return build_tiny_llm(
        texts, out, seed=0, vocab_size=600, hidden_size=32, num_layers=2, pretrain_steps=20
    )
