"""`goracs select`: .npy and Parquet inputs, artifacts, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goracs_ray.cli import main
from goracs_ray.io import read_json


def _features_table(rng, n_train=60, n_valid=20, dim=5, *, labels=True):
    n = n_train + n_valid
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    cols = {
        "sample_id": [f"id{i:03d}" for i in range(n)],
        "split": ["train"] * n_train + ["valid"] * n_valid,
        "embedding": pa.array(list(emb), type=pa.list_(pa.float32())),
        "grad_norm": pa.array(rng.lognormal(size=n).astype(np.float32)),
    }
    if labels:
        labels = [int(i < 10) for i in range(n_train)] + [i % 2 for i in range(n_valid)]
        cols["label"] = pa.array(labels, type=pa.int64())
    return cols


def _write(path, cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_select_from_npy(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.normal(size=(80, 6)).astype(np.float32))
    np.save(tmp_path / "valid.npy", rng.normal(size=(30, 6)).astype(np.float32))
    np.save(tmp_path / "g.npy", rng.lognormal(size=80).astype(np.float32))
    out = tmp_path / "out"
    argv = ["select", "--train", str(tmp_path / "train.npy"), "--valid",
            str(tmp_path / "valid.npy"), "--grad-norms", str(tmp_path / "g.npy"),
            "--budget", "8", "--lam", "0.5", "--max-iters", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = pq.read_table(out / "coreset.parquet")
    assert table.column_names == ["sample_id", "rank", "class"]
    assert table.column("rank").to_pylist() == list(range(8))
    assert table.column("class").null_count == 8
    assert len(set(table.column("sample_id").to_pylist())) == 8
    trace = read_json(out / "selection_trace.json")
    assert trace["method"] == "goracs"
    assert trace["config"]["lam"] == 0.5
    poo = trace["info"]["parts"][0]["poo_trace"]
    assert all(b < a for a, b in zip(poo, poo[1:]))
    assert main(argv) == 2  # exists, no --overwrite
    assert main([*argv, "--overwrite"]) == 0


def test_select_from_features_parquet_with_labels(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "features").mkdir()  # a features directory (the output goes outside it)
    _write(tmp_path / "features" / "features.parquet", _features_table(rng))
    out = tmp_path / "out"
    argv = ["select", "--features", str(tmp_path / "features"), "--label-column", "label",
            "--budget", "10",
            "--lam", "0.5", "--max-iters", "3", "--estimator", "faithful",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = pq.read_table(out / "coreset.parquet").to_pydict()
    ids = table["sample_id"]
    assert all(int(i[2:]) < 60 for i in ids)  # train rows only
    assert table["class"] == [int(int(i[2:]) < 10) for i in ids]
    trace = read_json(out / "selection_trace.json")
    assert [p["class"] for p in trace["info"]["parts"]] == [0, 1]
    assert trace["inputs"]["features"] == "../features"  # relative: the tree can move


def test_select_from_split_parquet(tmp_path):
    rng = np.random.default_rng(2)
    cols = _features_table(rng, labels=False)
    table = pa.table(cols)
    pq.write_table(table.slice(60), tmp_path / "valid.parquet")
    pq.write_table(table.slice(0, 60), tmp_path / "train.parquet")
    out = tmp_path / "out"
    assert main(["select", "--train", str(tmp_path / "train.parquet"), "--valid",
                 str(tmp_path / "valid.parquet"), "--budget", "5", "--method", "goracs_greedy",
                 "--out", str(out)]) == 0  # fmt: skip
    trace = read_json(out / "selection_trace.json")
    assert trace["method"] == "goracs_greedy"


def _corrupt(cols, what):
    cols = dict(cols)
    emb = [np.asarray(v.as_py(), dtype=np.float32) for v in cols["embedding"]]
    if what == "nan":
        emb[3][0] = np.nan
    elif what == "dims":
        emb = [e if i < 60 else np.concatenate([e, [0.0]]) for i, e in enumerate(emb)]
    elif what == "dup":
        cols["sample_id"] = ["same"] * 2 + cols["sample_id"][2:]
    elif what == "empty_valid":
        cols["split"] = ["train"] * len(cols["split"])
    cols["embedding"] = pa.array([list(e) for e in emb], type=pa.list_(pa.float32()))
    return cols


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("nan", [], "`train_emb`"),
        ("dims", [], "embedding dims differ"),
        ("dup", [], "`train_ids`"),
        ("empty_valid", [], "split == 'valid'"),
        ("ok", ["--budget", "0"], "`budget`"),
        ("ok", ["--budget", "61"], "`budget`"),
        ("ok", ["--budget", "30", "--label-column", "label"], "`budget` gives class"),
        ("ok", ["--lam", "-0.5"], "`lam`"),
        ("ok", ["--method", "nope"], "nope"),
        ("missing", [], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, case, extra, message):
    rng = np.random.default_rng(3)
    cols = _features_table(rng)
    if case != "missing":
        _write(tmp_path / "f.parquet", cols if case == "ok" else _corrupt(cols, case))
    out = tmp_path / "out"
    argv = ["select", "--features", str(tmp_path / "f.parquet"), "--budget", "5", *extra,
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not (tmp_path / "out.part").exists()


def test_samples_dir_supplies_users_for_stratified_baselines(tmp_path):
    rng = np.random.default_rng(3)
    cols = _features_table(rng, labels=False)
    _write(tmp_path / "features.parquet", cols)
    samples = tmp_path / "samples"
    samples.mkdir()
    train_ids = cols["sample_id"][:60]
    users = [f"u{i % 4}" for i in range(60)]
    _write(samples / "train.parquet", {"sample_id": train_ids[::-1], "user": users[::-1],
                                       "target_item": ["i"] * 60})  # fmt: skip
    base = ["select", "--features", str(tmp_path / "features.parquet"), "--budget", "8",
            "--method", "stratified_user"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "no_samples")]) == 2
    assert not (tmp_path / "no_samples").exists()
    out = tmp_path / "out"
    assert main([*base, "--samples", str(samples), "--out", str(out)]) == 0
    chosen = pq.read_table(out / "coreset.parquet").column("sample_id").to_pylist()
    by_user = {u: sum(users[train_ids.index(c)] == u for c in chosen) for u in set(users)}
    assert sorted(by_user.values()) == [2, 2, 2, 2]  # 8 picks over 4 equal strata
