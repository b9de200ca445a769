"""Distributed ITRA on a real local Ray: the serial coreset for 1, 2, 4 evaluators and crashes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from goracs_ray.select.cost import cost_matrix
from goracs_ray.select.greedy import greedy_init
from goracs_ray.select.itra import select_coreset
from goracs_ray.select.options import ItraOptions
from goracs_ray.select.refine import refine
from goracs_ray.select.types import FeatureTable

OPTS = {"max_iters": 4, "cut_num": 10}


@pytest.fixture(scope="module")
def data(make_problem):
    return make_problem(5)


def test_waves_give_the_serial_coreset_for_1_2_4_evaluators(ray_local, data):
    from goracs_ray.select.distributed import WorkerSettings, start_selector

    train, valid, grads = data
    cost = cost_matrix(train, valid, grads, lam=0.1).values
    serial_greedy = greedy_init(cost, 20)
    selector, _inputs = start_selector(
        train, valid, grads, workers=WorkerSettings(evaluators=4, shards=3)
    )
    ray_local.get(selector.prepare.remote({"lam": 0.1, "divide_distance": True, "grad_max": None}))
    greedy = ray_local.get(selector.greedy.remote(20, False))
    np.testing.assert_array_equal(greedy.indices, serial_greedy.indices)
    np.testing.assert_array_equal(greedy.order, serial_greedy.order)
    for batch in (1, 3):
        serial = refine(cost, greedy.indices, batch_size=batch, **OPTS)
        assert len(serial.swaps) >= 2
        opts = ItraOptions(
            estimator="corrected", batch_size=batch, warm_start=True, time_limit=None, tol=1e-12,
            **OPTS,
        )  # fmt: skip
        for workers in (1, 2, 4):
            ref, info = ray_local.get(selector.refine.remote(greedy.indices, opts, workers))
            np.testing.assert_array_equal(ref.indices, serial.indices)
            np.testing.assert_array_equal(ref.swaps, serial.swaps)
            np.testing.assert_allclose(ref.poo_trace, serial.poo_trace, rtol=1e-12)
            assert info["evaluators"] == workers
            assert {w["workers"] for w in info["waves"]} <= set(range(1, workers + 1))
            assert max(w["pairs"] for w in info["waves"]) == batch * -(-workers // batch)
    ray_local.kill(selector)


def test_select_distributed_with_labels_matches_select_coreset(ray_local, data):
    from goracs_ray.select.distributed import WorkerSettings, select_distributed

    train, valid, grads = data
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 2, len(train))
    valid_labels = rng.integers(0, 2, len(valid))
    serial = select_coreset(
        train, valid, grads, 16, 0.1, train_labels=train_labels, valid_labels=valid_labels,
        estimator="faithful", **OPTS,
    )  # fmt: skip
    features = FeatureTable(
        train_ids=np.arange(len(train)), train_emb=train, valid_emb=valid, grad_norms=grads,
        train_labels=train_labels, valid_labels=valid_labels,
    )  # fmt: skip
    result = select_distributed(
        features, 16, lam=0.1, estimator="faithful",
        workers=WorkerSettings(evaluators=2, shards=2), **OPTS,
    )  # fmt: skip
    np.testing.assert_array_equal(result.ids, serial.ids)
    trace = result.trace()
    assert trace["settings"]["distributed"]["evaluators"] == 2
    assert all(part["distributed"]["waves"] for part in trace["parts"])


@pytest.mark.parametrize(
    ("target", "method", "call"),
    [("evaluator", "evaluate", 3), ("shard", "candidates", 2)],
)
def test_a_crashed_actor_restarts_and_the_coreset_is_unchanged(
    ray_local, data, tmp_path, target, method, call
):
    from goracs_ray.select.distributed import FaultPlan, WorkerSettings, select_distributed

    train, valid, grads = data
    serial = select_coreset(train, valid, grads, 20, 0.1, batch_size=2, **OPTS)
    marker = tmp_path / "crashed"
    features = FeatureTable(
        train_ids=np.arange(len(train)), train_emb=train, valid_emb=valid, grad_norms=grads
    )
    result = select_distributed(
        features, 20, lam=0.1, batch_size=2, workers=WorkerSettings(evaluators=2, shards=2),
        fault=FaultPlan(target=target, index=1, method=method, call=call, marker=str(marker)),
        **OPTS,
    )  # fmt: skip
    assert marker.exists(), "the fault hook never fired"
    np.testing.assert_array_equal(result.ids, serial.ids)


def test_cli_select_distributed_writes_the_serial_coreset(ray_local, data, tmp_path):
    import pyarrow.parquet as pq

    from goracs_ray.cli import main

    train, valid, grads = data
    for name, arr in (("train", train), ("valid", valid), ("grads", grads)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "out"
    argv = [
        "select", "--train", str(tmp_path / "train.npy"), "--valid", str(tmp_path / "valid.npy"),
        "--grad-norms", str(tmp_path / "grads.npy"), "--budget", "20", "--max-iters", "4",
        "--cut-num", "10", "--batch-size", "2", "--distributed", "--workers", "2",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    serial = select_coreset(train, valid, grads, 20, 0.1, batch_size=2, **OPTS)
    table = pq.read_table(out / "coreset.parquet")
    np.testing.assert_array_equal(np.asarray(table["sample_id"]), serial.ids)
    trace = json.loads((out / "selection_trace.json").read_text())
    assert trace["config"]["distributed"] is True
    waves = trace["info"]["parts"][0]["distributed"]["waves"]
    assert waves
    assert all(w["workers"] <= 2 and w["seconds"] >= 0 for w in waves)


def test_a_killed_selector_resumes_from_its_checkpoint(ray_local, data, tmp_path):
    from goracs_ray.select.distributed import FaultPlan, WorkerSettings, select_distributed

    train, valid, grads = data
    serial = select_coreset(train, valid, grads, 20, 0.1, batch_size=2, **OPTS)
    assert len(serial.parts[0].refinement.swaps) >= 3
    marker = tmp_path / "crashed"
    features = FeatureTable(
        train_ids=np.arange(len(train)), train_emb=train, valid_emb=valid, grad_norms=grads
    )
    result = select_distributed(
        features, 20, lam=0.1, batch_size=2, workers=WorkerSettings(evaluators=2, shards=2),
        fault=FaultPlan(target="selector", index=0, method="swap", call=2, marker=str(marker)),
        checkpoint_dir=tmp_path / "ckpt", **OPTS,
    )  # fmt: skip
    assert marker.exists(), "the selector was never killed"
    part = result.trace()["parts"][0]
    assert part["selector_restarts"] == 1
    np.testing.assert_array_equal(result.ids, serial.ids)
    assert part["poo_trace"] == serial.trace()["parts"][0]["poo_trace"]


def test_select_cost_memory_mb_recomputes_rows_serial_and_on_ray(ray_local, data, monkeypatch):
    import goracs_ray.select.itra as itra_module
    from goracs_ray.select.config import SelectConfig, run_select

    train, valid, grads = data
    features = FeatureTable(
        train_ids=np.arange(len(train)), train_emb=train, valid_emb=valid, grad_norms=grads
    )
    common = {"method": "goracs", "budget": 16, "lam": 0.1, "max_iters": 4, "cut_num": 10}
    stored = run_select(SelectConfig(**common), features)
    # a budget of 0.01 MiB: blocks of a few rows; neither path ever holds the (N, M) cost
    monkeypatch.setattr(itra_module, "cost_matrix", None)  # the serial path must not build it
    for distributed in (False, True):
        cfg = SelectConfig(**common, cost_memory_mb=0.01, distributed=distributed, workers=2)
        got = run_select(cfg, features)
        np.testing.assert_array_equal(got.ids, stored.ids)
        assert got.info["settings"]["cost_memory_mb"] == 0.01
        assert got.info["parts"][0]["poo_trace"] == stored.info["parts"][0]["poo_trace"]
        assert len(stored.info["parts"][0]["poo_trace"]) >= 2  # refinement accepted swaps
    with pytest.raises(ValueError, match="cost_memory_mb"):  # refused when the config loads
        SelectConfig(**common, cost_memory_mb=0)
    with pytest.raises(ValueError, match="cost_memory_mb"):  # and by the library call
        select_coreset(train, valid, grads, 16, 0.1, cost_memory_mb=-1.0)
