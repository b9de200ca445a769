"""ZeRO-3 features groups: k = 2 Ray actors hold one model partitioned with DeepSpeed (gloo on
CPU) and give the norms, projections and embeddings of the single-process torch path, also
after losing a rank."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from goracs_ray.features.actors import compute_features
from goracs_ray.features.compute import FeatureComputer
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.io import read_json
from goracs_ray.models.config import ModelConfig
from goracs_ray.models.synthetic import synthetic_samples


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    pq.write_table(synthetic_samples(80, split="train", seed=0), out / "train.parquet")
    pq.write_table(synthetic_samples(20, split="valid", seed=1), out / "valid.parquet")
    return out


def _cfg(**kw) -> FeaturesConfig:
    # 100 rows in shards of 40, 40, 20: the second round has one shard for two ranks, so the
    # idle rank must keep the group in step; a small token budget gives each rank many batches.
    return FeaturesConfig(
        rows_per_shard=40,
        actor_cpus=0.5,
        max_length=96,
        batch_tokens=384,
        proj_dim=16,
        grad_target="all_lora",
        **kw,
    )


def test_two_rank_zero3_group_gives_the_torch_norms(
    ray_local, tmp_path, samples_dir, tiny_model_dir
):
    ds_json = tmp_path / "ds.json"  # partition even the tiny model's small matrices
    ds_json.write_text(
        json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}})
    )
    model = ModelConfig(path=str(tiny_model_dir), deepspeed=str(ds_json))
    out, crash = tmp_path / "zero3", tmp_path / "crash"
    # One rank dies at its first shard: the group is restarted and the round retried.
    res = compute_features(
        _cfg(model_shards=2, max_actors=2),
        samples_dir,
        out,
        model=model,
        crash_once_file=str(crash),
    )
    assert crash.exists()
    assert (res.n_rows, res.n_shards) == (100, 3)
    got = pq.read_table(out).sort_by("sample_id")
    assert got.num_rows == len(set(got["sample_id"].to_pylist())) == 100  # exactly once

    rows = pq.read_table(out / "_pool.parquet").sort_by("sample_id").to_pydict()
    torch_path = FeatureComputer(
        _cfg(), ModelConfig(deepspeed=None), "seqrec", tiny_model_dir, None
    )
    want = torch_path.compute(rows["sample_id"], rows["split"], rows["prompt"], rows["output"])
    assert want["sample_id"].to_pylist() == got["sample_id"].to_pylist()
    norms = got["grad_norm"].to_numpy()
    assert (norms > 0).all()
    np.testing.assert_allclose(norms, want["grad_norm"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(got["loss"].to_numpy(), want["loss"].to_numpy(), rtol=1e-4)
    for col in ("grad_proj", "embedding"):
        a = np.stack(got[col].to_numpy(zero_copy_only=False))
        b = np.stack(want[col].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())

    manifest = read_json(out / "_manifest.json")
    held, whole = manifest["param_bytes"]["held"], manifest["param_bytes"]["whole"]
    assert whole == sum(p.numel() * 4 for p in torch_path.model.parameters())
    assert held <= 0.55 * whole  # each of the 2 ranks holds about half of the weights


def test_a_zero3_group_needs_stage_3(tmp_path, samples_dir, tiny_model_dir):
    model = ModelConfig(path=str(tiny_model_dir), deepspeed=2)
    with pytest.raises(ValueError, match=r"model_shards: 2.*`model.deepspeed` is 2"):
        compute_features(_cfg(model_shards=2), samples_dir, tmp_path / "f", model=model)
    assert not (tmp_path / "f" / "_manifest.json").exists()
