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


def _run_select(args):
    from goracs_ray.cli import main

    return main(["select", "--budget", "2", *map(str, args)])


def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path, capsys):
    """Each case exits 2 with one line naming the culprit, writes nothing at --out."""
    rng = np.random.default_rng(0)
    good = tmp_path / "emb.npy"
    np.save(good, rng.normal(size=(6, 3)).astype(np.float32))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    features = _features_dir(tmp_path / "features")
    nan_ids = tmp_path / "nan_ids.parquet"
    pq.write_table(
        pa.table(
            {
                "sample_id": [1.0, float("nan"), 3.0, 4.0],
                "split": ["train", "train", "train", "valid"],
                "embedding": list(rng.normal(size=(4, 3)).astype(np.float32)),
                "grad_norm": np.ones(4, dtype=np.float32),
            }
        ),
        nan_ids,
    )
    str_grads = tmp_path / "str_grads.parquet"
    pq.write_table(
        pa.table(
            {
                "sample_id": ["a", "b", "c", "d"],
                "split": ["train", "train", "train", "valid"],
                "embedding": list(rng.normal(size=(4, 3)).astype(np.float32)),
                "grad_norm": ["1", "2", "3", "4"],
            }
        ),
        str_grads,
    )
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "out"
    cases = {
        "empty.npy": ["--train", empty, "--valid", good, "--out", out],
        "text.npy": ["--train", text, "--valid", good, "--out", out],
        "nan_ids.parquet": ["--features", nan_ids, "--out", out],  # a NaN sample id
        "grad_norm": ["--features", str_grads, "--out", out],
        "corrupt.parquet": ["--features", corrupt, "--out", out],
        "overlaps the input": ["--features", features, "--out", features, "--overwrite"],
        "overlaps": ["--features", features, "--out", features / "coreset"],  # inside it
    }
    for culprit, args in cases.items():
        capsys.readouterr()
        assert _run_select(args) == 2, culprit
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
        assert culprit.split()[0] in err[0] or culprit in err[0], (culprit, err[0])
        assert not out.exists()
    assert sorted(p.name for p in features.iterdir())[-1] == "part-00002.parquet"  # untouched
