"""Ray actor pool: ≥ 500 samples with 2 actors, fault injection, resume — exactly-once output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goracs_ray.data.schema import ITEM_SCHEMA, Task
from goracs_ray.features.actors import compute_features
from goracs_ray.features.compute import FeatureComputer
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.io import read_json
from goracs_ray.models.config import LoraSettings, ModelConfig
from goracs_ray.models.synthetic import synthetic_samples


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    train = synthetic_samples(460, split="train", seed=0)
    valid = synthetic_samples(60, split="valid", seed=1)
    pq.write_table(train, out / "train.parquet")
    pq.write_table(valid, out / "valid.parquet")
    items = {}
    for table in (train, valid):
        for row in table.select(["target_item", "target_title"]).to_pylist():
            items[row["target_item"]] = row["target_title"]
    catalog = pa.table(
        {"item_id": list(items), "title": list(items.values()), "description": [None] * len(items)},
        schema=ITEM_SCHEMA,
    )
    pq.write_table(catalog, out / "items.parquet")
    return out


def _cfg():
    return FeaturesConfig(
        rows_per_shard=40,
        min_actors=2,
        max_actors=2,
        actor_cpus=0.5,
        max_length=128,
        proj_dim=16,
    )


def _read(out_dir):
    files = sorted(out_dir.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]), files


def _expected_ids(samples_dir):
    ids = []
    for split in ("train", "valid"):
        ids += pq.read_table(samples_dir / f"{split}.parquet")["sample_id"].to_pylist()
    return ids


def test_actor_pool_fault_injection_and_resume(ray_local, tmp_path, samples_dir, tiny_model_dir):
    cfg = _cfg()
    want = _expected_ids(samples_dir)
    assert len(want) >= 500

    clean = compute_features(cfg, samples_dir, tmp_path / "clean", model=tiny_model_dir)
    table, files = _read(tmp_path / "clean")
    assert clean.n_rows == 520
    assert len(files) == clean.n_shards == 13
    assert sorted(table["sample_id"].to_pylist()) == sorted(want)  # exactly once
    manifest = read_json(tmp_path / "clean" / "_manifest.json")
    assert manifest["n_rows"] == 520
    assert manifest["splits"] == {"train": 460, "valid": 60}
    assert manifest["column_bytes"]["grad_proj"] == 520 * 16 * 4  # N × proj_dim × float32
    assert manifest["compute_seconds"]["projection"] > 0
    assert manifest["compute_seconds"]["gradients"] > 0

    crash = tmp_path / "crash.flag"
    faulty = compute_features(
        cfg, samples_dir, tmp_path / "faulty", model=tiny_model_dir, crash_once_file=str(crash)
    )
    assert crash.exists()  # an actor really died mid-shard
    ftable, _ = _read(tmp_path / "faulty")
    assert faulty.n_rows == 520
    assert sorted(ftable["sample_id"].to_pylist()) == sorted(want)
    a = table.sort_by("sample_id")
    b = ftable.sort_by("sample_id")
    np.testing.assert_allclose(b["grad_norm"].to_numpy(), a["grad_norm"].to_numpy(), rtol=1e-5)
    pa_, pb_ = (np.stack(t["grad_proj"].to_numpy(zero_copy_only=False)) for t in (a, b))
    np.testing.assert_allclose(pb_, pa_, rtol=1e-4, atol=1e-6)

    files[3].unlink()
    resumed = compute_features(cfg, samples_dir, tmp_path / "clean", model=tiny_model_dir)
    assert resumed.n_skipped == 12
    rtable, _ = _read(tmp_path / "clean")
    assert sorted(rtable["sample_id"].to_pylist()) == sorted(want)

    # the same rows computed locally (another process, no Ray) give the same projection
    rows = pq.read_table(tmp_path / "clean" / "_pool.parquet").slice(0, 5).to_pydict()
    local = FeatureComputer(cfg, ModelConfig(), Task.SEQREC, tiny_model_dir, None).compute(
        rows["sample_id"], rows["split"], rows["prompt"], rows["output"]
    )
    first = pq.read_table(tmp_path / "clean" / "part-00000.parquet").slice(0, 5)
    np.testing.assert_allclose(
        np.stack(local["grad_proj"].to_numpy(zero_copy_only=False)),
        np.stack(first["grad_proj"].to_numpy(zero_copy_only=False)),
        rtol=1e-4,
        atol=1e-6,
    )


def test_refuses_other_settings_in_same_dir(ray_local, tmp_path, samples_dir, tiny_model_dir):
    cfg = _cfg()
    cfg.splits, cfg.min_actors, cfg.max_actors, cfg.rows_per_shard = ("valid",), 1, 1, 60
    context = ray_local.data.DataContext.get_current()
    context.enable_progress_bars = True  # the user's own setting
    first = compute_features(cfg, samples_dir, tmp_path / "f", model=tiny_model_dir)
    assert first.n_shards == 1
    assert context.enable_progress_bars is True  # left as the user set it
    again = compute_features(
        cfg, samples_dir, tmp_path / "f", model=tiny_model_dir
    )  # complete: nothing to do
    assert again.n_skipped == 1
    other_adapter = ModelConfig(path=tiny_model_dir, lora=LoraSettings(r=4))
    with pytest.raises(FileExistsError, match="--overwrite"):  # another model setting
        compute_features(cfg, samples_dir, tmp_path / "f", model=other_adapter)
    cfg.proj_dim = 8
    with pytest.raises(FileExistsError, match="--overwrite"):
        compute_features(cfg, samples_dir, tmp_path / "f", model=tiny_model_dir)
    res = compute_features(cfg, samples_dir, tmp_path / "f", model=tiny_model_dir, overwrite=True)
    assert res.n_skipped == 0


def test_cli_lists_features_and_model():
    out = subprocess.run(
        [sys.executable, "-m", "goracs_ray.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "features" in out.stdout
    assert "model" in out.stdout


def test_cli_model_tiny_then_features(ray_local, tmp_path, samples_dir):
    from goracs_ray.cli import main

    assert (
        main(
            ["model", "tiny", "--samples", str(samples_dir), "--out", str(tmp_path / "m")]
            + ["--pretrain-steps", "100"]
        )
        == 0
    )
    record = read_json(tmp_path / "m" / "pretraining.json")
    assert record["documents"] == pq.read_metadata(samples_dir / "items.parquet").num_rows
    assert 0 < record["steps"] <= 100
    args = ["features", "--samples", str(samples_dir), "--out", str(tmp_path / "f")]
    sets = ["splits=[valid]", "rows_per_shard=30", "min_actors=1", "max_actors=1"]
    sets += ["actor_cpus=0.5", "grad_target=all_lora", "model.lora.r=4"]
    args += ["--model", str(tmp_path / "m")]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    table = pq.read_table(tmp_path / "f" / "part-00001.parquet")
    assert table.num_rows == 30
    manifest = read_json(tmp_path / "f" / "_manifest.json")
    assert manifest["config"]["grad_target"] == "all_lora"
    assert (manifest["model"]["lora"]["r"], manifest["task"]) == (4, "seqrec")
    assert main(args + ["--set", "proj_dim=-1"]) == 2  # bad config → exit code 2
