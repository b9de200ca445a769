"""Stage functions on Ray Datasets (embedding goracs_ray in a user's own Ray pipeline)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from goracs_ray import api
from goracs_ray.select.config import SelectConfig


def _features(n_train: int, n_valid: int, d: int = 8) -> pa.Table:
    rng = np.random.default_rng(0)
    n = n_train + n_valid
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return pa.table(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "split": ["train"] * n_train + ["valid"] * n_valid,
            "embedding": list(emb),
            "grad_norm": rng.lognormal(size=n).astype(np.float32),
        }
    )


def test_select_on_ray_datasets_matches_the_path_api(ray_local, tmp_path):
    import pyarrow.parquet as pq

    table = _features(60, 20)
    pq.write_table(table, tmp_path / "features.parquet")
    cfg = SelectConfig(method="goracs", budget=7, lam=0.5, max_iters=3)
    expected = api.select_table(tmp_path / "features.parquet", cfg).ids.tolist()

    ds = ray_local.data.from_arrow(table).repartition(3)
    ranked = api.select(ds, cfg).to_pandas().sort_values("rank")
    assert ranked["sample_id"].tolist() == expected

    samples = ray_local.data.from_arrow(
        pa.table({"sample_id": [f"s{i}" for i in range(60)], "output": ["x"] * 60})
    )
    chosen = api.select(ds, cfg, samples=samples).to_pandas()
    assert sorted(chosen["sample_id"]) == sorted(expected)
