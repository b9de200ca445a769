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
    samples = samples.repartition(4)  # rank order must survive the blocks' order
    chosen = api.select(ds, cfg, samples=samples).to_pandas()
    assert chosen["sample_id"].tolist() == expected  # rank order, as `goracs select` writes
    chosen = api.select(tmp_path / "features.parquet", cfg, samples=_samples_file(tmp_path))
    assert chosen.to_pandas()["sample_id"].tolist() == expected


def _samples_file(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(60)]}), path)
    return path


def test_coreset_samples_keep_rank_order_and_refuse_foreign_ids():
    import pytest

    from goracs_ray.select.output import coreset_samples

    samples = pa.table({"sample_id": ["a", "b", "c", "d"], "output": ["1", "2", "3", "4"]})
    chosen = coreset_samples(samples, np.array(["c", "a", "d"]))
    assert chosen.column("sample_id").to_pylist() == ["c", "a", "d"]
    assert chosen.column("output").to_pylist() == ["3", "1", "4"]
    with pytest.raises(ValueError, match="not in the samples"):
        coreset_samples(samples, np.array(["a", "zz"]))
