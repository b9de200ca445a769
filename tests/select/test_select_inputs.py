"""Reading a features dir: the manifest written last guards against incomplete or stale dirs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goracs_ray.data.schema import FEATURES_MANIFEST
from goracs_ray.select.inputs import load_feature_table


def _features_dir(root, n_shards=3, rows=10, *, manifest=True):
    rng = np.random.default_rng(0)
    root.mkdir()
    (root / "_run.json").write_text("{}")
    names = []
    for s in range(n_shards):
        ids = [f"s{s}-{i}" for i in range(rows)]
        table = pa.table(
            {
                "sample_id": ids,
                "split": ["valid" if i < 2 else "train" for i in range(rows)],
                "embedding": list(rng.normal(size=(rows, 4)).astype(np.float32)),
                "grad_norm": rng.random(rows).astype(np.float32),
            }
        )
        names.append(f"part-{s:05d}.parquet")
        pq.write_table(table, root / names[-1])
    if manifest:
        (root / FEATURES_MANIFEST).write_text(
            json.dumps({"shards": names, "n_rows": n_shards * rows})
        )
    return root


def test_a_complete_features_dir_reads_with_goracs_and_pandas(tmp_path):
    path = _features_dir(tmp_path / "f")
    table = load_feature_table(path)
    assert (table.n_train, table.n_valid) == (24, 6)
    assert len(pd.read_parquet(path)) == 30  # the manifest does not break Parquet readers


def test_an_unfinished_run_is_refused(tmp_path):
    path = _features_dir(tmp_path / "f", manifest=False)
    with pytest.raises(ValueError, match="unfinished features run.*resume"):
        load_feature_table(path)


def test_a_missing_shard_is_refused(tmp_path):
    path = _features_dir(tmp_path / "f")
    (path / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match=r"missing shard\(s\) \['part-00001.parquet'\]"):
        load_feature_table(path)


def test_a_shard_with_other_rows_is_refused(tmp_path):
    path = _features_dir(tmp_path / "f")
    short = pq.read_table(path / "part-00002.parquet").slice(0, 7)
    pq.write_table(short, path / "part-00002.parquet")
    with pytest.raises(ValueError, match="holds 27 rows but its _manifest.json lists 30"):
        load_feature_table(path)


def test_user_parquet_without_a_manifest_is_read_as_is(tmp_path):
    path = _features_dir(tmp_path / "f", manifest=False)
    (path / "_run.json").unlink()  # not a `goracs features` dir: the user's own Parquet
    assert load_feature_table(path).n_train == 24
