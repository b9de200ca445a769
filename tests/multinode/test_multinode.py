"""Multi-node Ray: hand-offs through the object store, and stages that keep going while nodes
join and leave (issues 17 and 18).

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head raylet with 0 CPUs (the
driver's node; it holds the driver-owned objects) and a worker raylet ``A`` (1 CPU, custom
resource ``stable``); each test adds and removes its own extra raylets. A driver can be
connected to one Ray at a time, so the module fixture shuts down the session's local Ray
(``ray_local``) if one is up, and starts it again afterwards, so later tests find it as before.
Every raylet shares this machine's disk, so the tests cannot show a block stranded on another
node's disk directly; the hand-off test instead forbids ``Dataset.write_parquet`` and checks
that the blocks were built on a node other than the driver's.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from goracs_ray.io import read_json

#: Raylets on loopback, each with a small object store (the machine has 2 cores).
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from goracs_ray.raycluster import LOOPBACK_ENV, ensure_ray

    restart = ray.is_initialized()
    if restart:
        ray.shutdown()
    mp = pytest.MonkeyPatch()
    mp.setenv(LOOPBACK_ENV, "0")  # loopback-only raylets, as ensure_ray's local Ray
    mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    nodes = Cluster()
    try:
        _start_head(nodes)
        _add_node(nodes, num_cpus=1, resources={"stable": 4})
        ray.init(address=nodes.address, logging_level=logging.WARNING)
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        mp.undo()
        if restart:
            ensure_ray(num_cpus=4)  # the session's `ray_local`, as tests/conftest.py starts it


def _start_head(cluster) -> None:
    """The head raylet (0 CPUs), tried again if it is not up within Ray's 30 s, as happens on a
    loaded 2-core machine (a failed try's processes end with this process; no cluster has
    formed yet for them to join, unlike a retried worker raylet, which could join late)."""
    for attempt in range(3):
        try:
            cluster.add_node(num_cpus=0, **NODE)
            return
        except Exception as exc:  # Ray raises a bare Exception for this timeout
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            logging.getLogger(__name__).warning("the head raylet was slow to start; again")


def _add_node(cluster, **kwargs):
    return cluster.add_node(**NODE, **kwargs)


def _wait(done, what: str, running: Future | None = None, timeout: float = 240) -> None:
    """Poll ``done()``; fail if ``timeout`` passes or the work in ``running`` ends first."""
    end = time.monotonic() + timeout
    while not done():
        if running is not None and running.done():
            running.result()  # raises the work's own error, if any
            pytest.fail(f"the run ended before {what}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


# -- issue 17: api.select on Datasets whose blocks live on another node --------------------------


def _feature_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features of rows ``id`` (numpy batches: the embedding becomes a tensor column), tagged
    with the node that built them."""
    import ray

    ids = batch["id"]
    rng = [np.random.default_rng(int(i)) for i in ids]
    return {
        "sample_id": np.array([f"s{i}" for i in ids]),
        "split": np.where(ids < 60, "train", "valid"),
        "embedding": np.stack([r.normal(size=8) for r in rng]).astype(np.float32),
        "grad_norm": np.array([r.lognormal() for r in rng], dtype=np.float32),
        "node": np.array([ray.get_runtime_context().get_node_id()] * len(ids)),
    }


def test_select_reads_a_dataset_built_on_another_node(cluster, tmp_path, monkeypatch):
    import ray

    from goracs_ray import api
    from goracs_ray.select.config import SelectConfig

    head = cluster.head_node.node_id
    ds = ray.data.range(80, override_num_blocks=4).map_batches(_feature_rows).materialize()
    built_on = {n for t in ray.get(ds.to_arrow_refs()) for n in t["node"].to_pylist()}
    assert head not in built_on  # every block was built, and is held, away from the driver
    rows = _feature_rows({"id": np.arange(80)})
    local = pa.table({**rows, "embedding": list(rows["embedding"])}).drop_columns(["node"])
    pq.write_table(local, tmp_path / "features.parquet")
    cfg = SelectConfig(method="goracs", budget=7, lam=0.5, max_iters=3)
    expected = api.select_table(tmp_path / "features.parquet", cfg).ids.tolist()

    def no_disk(*args, **kwargs):
        raise AssertionError("a hand-off through Dataset.write_parquet")

    monkeypatch.setattr(ray.data.Dataset, "write_parquet", no_disk)
    ranked = api.select(ds, cfg).to_pandas().sort_values("rank")
    assert ranked["sample_id"].tolist() == expected  # the whole pool was seen

    samples = ray.data.range(60, override_num_blocks=3).map_batches(
        lambda b: {"sample_id": np.array([f"s{i}" for i in b["id"]]), "output": b["id"] * 2}
    )
    chosen = api.select(ds, cfg, samples=samples).to_pandas()
    assert chosen["sample_id"].tolist() == expected  # in rank order
    assert chosen["output"].tolist() == [2 * int(s[1:]) for s in expected]


# -- issue 18: the features actor pool grows onto a new node and survives losing it ---------------


def test_features_pool_grows_onto_a_new_node_and_loses_nothing_with_it(
    cluster, tmp_path, tiny_model_dir
):
    from goracs_ray.features.actors import SHARD_NODE_KEY, compute_features
    from goracs_ray.features.config import FeaturesConfig
    from goracs_ray.models.synthetic import synthetic_samples

    samples = tmp_path / "samples"
    samples.mkdir()
    pq.write_table(synthetic_samples(40, split="train", seed=0), samples / "train.parquet")
    pq.write_table(synthetic_samples(8, split="valid", seed=1), samples / "valid.parquet")
    out, hold = tmp_path / "features", tmp_path / "hold"
    cfg = FeaturesConfig(rows_per_shard=2, min_actors=1, max_actors=2, actor_cpus=1, max_length=64)

    def writers() -> set[str]:
        found = set()
        for f in out.glob("part-*.parquet"):
            found.add(pq.read_schema(f).metadata[SHARD_NODE_KEY].decode())
        return found

    def waiting(node) -> bool:
        return Path(f"{hold}.{node.node_id}").exists()

    a = next(iter(cluster.worker_nodes))
    hold.touch()  # actors wait before each shard while this exists
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(compute_features, cfg, samples, out, model=tiny_model_dir,
                          hold_file=str(hold))  # fmt: skip
        _wait(lambda: waiting(a), "the first actor", run)
        b = _add_node(cluster, num_cpus=1)
        try:
            _wait(lambda: waiting(b), "an actor on the new node", run)  # the pool grew
            hold.unlink()
            _wait(lambda: b.node_id in writers(), "a shard from the new node", run)
        finally:
            cluster.remove_node(b)  # mid-run: its actor dies with shards in flight
        assert not run.done()
        result = run.result(timeout=300)
    table = pq.read_table(out, columns=["sample_id"])
    want = [f"train-{i}" for i in range(40)] + [f"valid-{i}" for i in range(8)]
    assert sorted(table["sample_id"].to_pylist()) == sorted(want)  # exactly once
    assert result.n_shards == 24
    assert len(list(out.glob("part-*.parquet"))) == 24
    assert writers() <= {a.node_id, b.node_id}
    assert b.node_id in writers()
    manifest = read_json(out / "_manifest.json")
    assert sum(manifest["shards_by_node"].values()) == 24


# -- issue 18: distributed selection loses an evaluator's node -----------------------------------


def _descends_from(pid: int, node) -> bool:
    """Whether process ``pid`` is a worker of ``node``'s raylet."""
    import psutil

    raylet = node.all_processes["raylet"][0].process.pid
    return pid in {p.pid for p in psutil.Process(raylet).children(recursive=True)}


def test_distributed_selection_survives_losing_an_evaluators_node(cluster, tmp_path):
    from goracs_ray.select.distributed import FaultPlan, WorkerSettings, select_distributed
    from goracs_ray.select.itra import select_coreset
    from goracs_ray.select.types import FeatureTable

    rng = np.random.default_rng(5)
    centers = rng.normal(size=(4, 8)) * 2
    train = (centers[rng.integers(0, 4, 200)] + rng.normal(size=(200, 8))).astype(np.float32)
    valid = (centers[rng.integers(0, 4, 40)] + rng.normal(size=(40, 8))).astype(np.float32)
    grads = rng.lognormal(0.0, 0.5, 200).astype(np.float32)
    opts = {"lam": 0.1, "batch_size": 2, "max_iters": 4, "cut_num": 10}
    serial = select_coreset(train, valid, grads, 16, **opts)
    features = FeatureTable(
        train_ids=np.arange(200), train_emb=train, valid_emb=valid, grad_norms=grads
    )
    # Selector and shards on A (`stable`), the evaluators on a node of their own (`spare`).
    workers = WorkerSettings(
        evaluators=2, shards=2, evaluator_resources={"spare": 1}, state_resources={"stable": 1}
    )
    marker = tmp_path / "stalled"
    fault = FaultPlan(target="evaluator", index=0, method="evaluate", call=3, marker=str(marker),
                      stall_s=120)  # fmt: skip
    doomed = _add_node(cluster, num_cpus=1, resources={"spare": 2})
    spare = None
    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(select_distributed, features, 16, workers=workers, fault=fault,
                              **opts)  # fmt: skip
            _wait(marker.exists, "an evaluator mid-call", run)
            assert _descends_from(int(marker.read_text()), doomed)
            spare = _add_node(cluster, num_cpus=1, resources={"spare": 2})
            cluster.remove_node(doomed)  # the stalled call and its evaluator die with it
            doomed = None
            result = run.result(timeout=300)
    finally:
        for node in (doomed, spare):
            if node is not None:
                cluster.remove_node(node)
    np.testing.assert_array_equal(result.ids, serial.ids)
    assert result.parts[0].info["selector_restarts"] == 0


# -- issue 18: elastic Ray Train shrinks when a node leaves and grows when one joins -------------


def _refresh_room_for_workers(node_id: str, alive: bool) -> None:
    """Once Ray sees ``node_id`` alive (or dead), make its AutoscalingCoordinator, which Ray
    Train's elastic policy asks for room, re-read the nodes now rather than at its next tick
    (every 20 s): the resize itself is Ray Train's, only sooner."""
    import ray

    _wait(lambda: any(n["NodeID"] == node_id and n["Alive"] == alive for n in ray.nodes())
          or (not alive and all(n["NodeID"] != node_id for n in ray.nodes())),
          f"node {node_id[:8]} {'alive' if alive else 'dead'}")  # fmt: skip
    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    ray.get(coordinator.get_reserved_resources.remote("goracs-test", recompute=True))


def test_elastic_finetune_shrinks_and_grows_with_the_cluster(
    cluster, tmp_path, tiny_model_dir, monkeypatch
):
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from goracs_ray.models.config import LoraSettings, ModelConfig
    from goracs_ray.models.synthetic import synthetic_samples
    from goracs_ray.train import EpochGate, TrainConfig, finetune

    # Should Ray Train size a group from a view of the cluster that still has a removed node,
    # that placement times out after this long and is retried with the room there is.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    train, valid = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    pq.write_table(synthetic_samples(12, split="train", seed=0, n_items=50), train)
    pq.write_table(synthetic_samples(4, split="valid", seed=1, n_items=50), valid)
    cfg = TrainConfig(
        epochs=3, batch_size=2, eval_batch_size=4, max_length=64, lr=5e-3, num_workers=2,
        min_workers=1, cpus_per_worker=1, resize_check_s=1, max_failures=3, patience=None,
    )  # fmt: skip
    model = ModelConfig(path=tiny_model_dir, deepspeed=None, lora=LoraSettings(r=4, alpha=8))
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold1").touch()
    (gate / "hold2").touch()
    added = [_add_node(cluster, num_cpus=1)]  # A + B: two workers
    try:
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(finetune, cfg, model=model, train_samples=train,
                              valid_samples=valid, out_dir=tmp_path / "ft", task="seqrec",
                              gate=EpochGate(str(gate)))  # fmt: skip
            _wait((gate / "epoch1-workers2").exists, "epoch 0 on 2 workers", run)
            # epoch 0's checkpoint counts once Ray Train has registered it
            snapshot = next((tmp_path / "ft" / "checkpoints").glob("*/")) / (
                "checkpoint_manager_snapshot.json"
            )
            _wait(snapshot.exists, "epoch 0's checkpoint", run)
            gone = added.pop()
            cluster.remove_node(gone)
            _refresh_room_for_workers(gone.node_id, alive=False)
            _wait((gate / "epoch1-workers1").exists, "the restart on 1 worker", run)
            (gate / "hold1").unlink()
            _wait((gate / "epoch2-workers1").exists, "epoch 1 on 1 worker", run)
            added.append(_add_node(cluster, num_cpus=1))
            _refresh_room_for_workers(added[-1].node_id, alive=True)
            _wait((gate / "epoch2-workers2").exists, "the group grown back to 2", run)
            (gate / "hold2").unlink()
            adapter = run.result(timeout=300)
    finally:
        for node in added:
            cluster.remove_node(node)
    metrics = read_json(tmp_path / "ft" / "train_metrics.json")
    assert [e["workers"] for e in metrics["epochs"]] == [2, 1, 2]
    assert not (gate / "epoch0-workers1").exists()  # resumed from epoch 0's checkpoint
    assert all(np.isfinite(e["valid_loss"]) for e in metrics["epochs"])
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert sum(np.linalg.norm(v) for k, v in tensors.items() if "lora_B" in k) > 0
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert peft.peft_config["default"].r == 4
