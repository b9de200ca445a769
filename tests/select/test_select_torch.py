"""The torch kernels (cost rows, screening) against the numpy path, on CPU tensors.

``device="torch-cpu"`` runs the CUDA code path on CPU tensors, so every check here runs on any
machine; ``benchmarks/gpu_check_select.py`` repeats the comparison on a GPU.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from goracs_ray.select import FeatureTable, kernels, select_coreset
from goracs_ray.select.config import SelectConfig, run_select
from goracs_ray.select.cost import cost_matrix, distance_block, normalize_block
from goracs_ray.select.itra import itra
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.refine import dual_columns
from goracs_ray.select.rowstore import memory_store, recomputed_store
from goracs_ray.select.sharded import column_groups

TORCH = kernels.TORCH_CPU


@pytest.fixture(autouse=True)
def torch_calls(monkeypatch):
    """Count torch transfers (proves the torch path ran); one torch thread on the shared box."""
    calls = {"n": 0}
    tensor = kernels._tensor

    def counted(array, device):
        calls["n"] += 1
        return tensor(array, device)

    monkeypatch.setattr(kernels, "_tensor", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield calls
    torch.set_num_threads(threads)


def _mixture(seed: int, n_train: int, n_valid: int, dim: int = 16, k: int = 4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3
    train = centers[rng.integers(0, k, n_train)] + rng.normal(size=(n_train, dim))
    valid = centers[rng.integers(0, k, n_valid)] + rng.normal(size=(n_valid, dim))
    grads = rng.lognormal(0.0, 0.5, n_train)
    return train.astype(np.float32), valid.astype(np.float32), grads.astype(np.float32)


def test_torch_cost_rows_match_the_numpy_rows(torch_calls):
    train, valid, grads = _mixture(0, 300, 40)
    dist = distance_block(train, valid)
    got = kernels.distance_block(train, valid, device=TORCH)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, dist, rtol=0, atol=1e-6 * float(dist.max()))
    want = cost_matrix(train, valid, grads, lam=0.5, block_rows=64)
    full = cost_matrix(train, valid, grads, lam=0.5, block_rows=64, device=TORCH)
    assert full.values.dtype == np.float32
    np.testing.assert_allclose(full.values, want.values, rtol=0, atol=1e-6)
    for name in ("dist_max", "grad_max", "low", "high"):
        assert getattr(full.scales, name) == pytest.approx(getattr(want.scales, name), abs=1e-6)
    # normalisation and the fused rows on the same input: bit-identical to numpy
    numpy_norm = normalize_block(dist.copy(), grads, want.scales)
    torch_norm = kernels.normalize_block(dist.copy(), grads, want.scales, device=TORCH)
    np.testing.assert_array_equal(torch_norm, numpy_norm)
    fused = kernels.cost_block(train[:50], valid, grads[:50], want.scales, device=TORCH)
    np.testing.assert_allclose(fused, want.values[:50], rtol=0, atol=1e-6)
    assert torch_calls["n"] > 0


def test_torch_screening_kernels_equal_numpy():
    train, valid, grads = _mixture(1, 200, 70)
    cost = cost_matrix(train, valid, grads, lam=0.3).values
    order, starts = column_groups(valid, n_groups=9)
    want = np.minimum.reduceat(cost[:, order], starts, axis=1)
    got = kernels.group_minima(cost, order, starts, device=TORCH)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    f = np.random.default_rng(2).normal(size=70) * 0.1
    for offsets in (f, f.astype(np.float32)):  # group bound (float64), row bound (float32)
        expect = (cost - offsets).min(axis=1)
        low = kernels.reduced_min(cost, offsets, device=TORCH)
        assert low.dtype == expect.dtype
        np.testing.assert_array_equal(low, expect)


@pytest.mark.parametrize("estimator", ["corrected", "faithful"])
def test_torch_stores_give_the_numpy_coreset(estimator, torch_calls):
    train, valid, grads = _mixture(5, 500, 40)
    cost = cost_matrix(train, valid, grads, lam=0.5).values
    opts = {"estimator": estimator, "max_iters": 4, "cut_num": 8, "batch_size": 2}
    want = itra(cost, 12, **opts)
    assert want.refinement.swaps.shape[0] >= 1
    stores = {}
    for device in ("cpu", TORCH):
        values = cost_matrix(train, valid, grads, lam=0.5, device=device).values
        recomputed, _ = recomputed_store(
            train, valid, grads, lam=0.5, memory_bytes=30_000, n_shards=2, device=device
        )
        stores[device] = (memory_store(values, device=device), recomputed)
    np.testing.assert_allclose(stores[TORCH][1].rows(np.arange(500)), cost, rtol=0, atol=1e-6)
    members = want.greedy.indices
    duals = dual_columns(cost[members], solve_ot(cost[members]).u, members)
    for numpy_store, torch_store in zip(stores["cpu"], stores[TORCH]):
        # the screening keeps the same candidates after scoring as many rows as numpy's
        expect = numpy_store.candidates(duals, members, cut_num=8, estimator=estimator)
        cands = torch_store.candidates(duals, members, cut_num=8, estimator=estimator)
        np.testing.assert_array_equal(cands.pairs, expect.pairs)
        assert cands.n_scored == expect.n_scored
        got = itra(torch_store, 12, **opts)
        np.testing.assert_array_equal(got.greedy.order, want.greedy.order)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.refinement.swaps, want.refinement.swaps)
        np.testing.assert_allclose(got.poo_trace, want.poo_trace, rtol=0, atol=1e-6)
    assert torch_calls["n"] > 0


def test_select_device_reaches_the_torch_path(torch_calls):
    train, valid, grads = _mixture(4, 240, 30)
    rng = np.random.default_rng(5)
    features = FeatureTable(
        train_ids=np.arange(240), train_emb=train, valid_emb=valid, grad_norms=grads,
        train_labels=rng.integers(0, 2, 240), valid_labels=rng.integers(0, 2, 30),
    )  # fmt: skip
    want = run_select(SelectConfig(budget=10, lam=0.5, max_iters=3), features)
    assert torch_calls["n"] == 0
    got = run_select(SelectConfig(budget=10, lam=0.5, max_iters=3, device=TORCH), features)
    assert torch_calls["n"] > 0
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.info["settings"]["device"] == TORCH
    assert want.info["settings"]["device"] == "cpu"


def test_device_setting_is_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"`select\.device` must be cpu, cuda"):
        SelectConfig(device="gpu")
    with pytest.raises(ValueError, match="distributed: false"):
        SelectConfig(device="cuda", distributed=True)
    assert SelectConfig(device="auto", distributed=True).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"CUDA is not available .*select\.device: cpu"):
        kernels.resolve_device("cuda")
    train, valid, grads = _mixture(6, 30, 10)
    with pytest.raises(ValueError, match="CUDA is not available"):  # before any selection work
        select_coreset(train, valid, grads, 5, 0.5, device="cuda:0")
    assert kernels.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert kernels.resolve_device("auto") == "cuda"
    assert kernels.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="sees 1 GPU"):
        kernels.resolve_device("cuda:1")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name)
    )
    assert kernels.resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="torch is not installed"):
        kernels.resolve_device("cuda")


def test_distributed_refuses_a_torch_device():
    from goracs_ray.select.distributed import select_distributed

    train, valid, grads = _mixture(7, 30, 10)
    features = FeatureTable(train_ids=np.arange(30), train_emb=train, valid_emb=valid,
                            grad_norms=grads)  # fmt: skip
    with pytest.raises(ValueError, match="serial path"):
        select_distributed(features, 5, lam=0.5, device="cuda")
