"""Ray shell of the features stage: an autoscaling actor pool over resumable output shards.

Layout of ``out_dir``::

    _pool.parquet        the samples to featurise (sample_id, split, prompt, output), fixed order
    _run.json            fingerprint of pool + result-affecting config (checked on resume)
    tiny_model/          the default tiny LLM, when no model_path is given
    warmup_adapter/      the warm-up adapter, when warmup_steps > 0
    part-00000.parquet   FEATURE_COLUMNS for pool rows [0, rows_per_shard), ...
    _manifest.json       written last: shards, counts, timings, model and settings, and how many
                         shards each Ray node computed in this call (``shards_by_node``; the
                         leading ``_`` lets pandas / pyarrow.dataset read the dir as a dataset)

Shard ``c`` holds pool rows ``[c·R, (c+1)·R)``. An actor computes a whole shard and writes it with
an atomic rename, so a shard file exists only when complete: re-running skips existing shards, and
an actor killed mid-shard leaves nothing; Ray Data restarts the actor and retries the task, which
writes that shard once. Output is therefore exactly-once by shard id whatever the failures.

Multi-node: the pool grows onto nodes that join (up to ``max_actors``) and an actor lost with its
node is restarted elsewhere, its shard retried. Every node writes into ``out_dir``, so on a real
cluster it must be shared storage (each shard file records its writer node in the Parquet schema
metadata under :data:`SHARD_NODE_KEY`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from goracs_ray.configutil import to_dict
from goracs_ray.data.prompts import format_prompt
from goracs_ray.data.schema import FEATURES_MANIFEST, Task
from goracs_ray.features.compute import SECONDS_METADATA_KEY, FeatureComputer, warmup_adapter
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.io import check_output, read_json, write_json, write_parquet
from goracs_ray.models.config import ModelConfig

__all__ = ["SHARD_NODE_KEY", "FeaturesResult", "compute_features"]

logger = logging.getLogger(__name__)

#: Parquet schema-metadata key of a shard file: the id of the Ray node whose actor wrote it.
SHARD_NODE_KEY = b"goracs.ray_node_id"

_NOT_RESULT_FIELDS = {
    "batch_tokens",
    "min_actors",
    "max_actors",
    "actor_cpus",
    "actor_gpus",
    "torch_threads",
    "model_shards",  # the same norms partitioned or not (tested to 1e-4)
}
_NOT_RESULT_MODEL_FIELDS = {"device", "deepspeed"}


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
    """Outcome of :func:`compute_features`.

    Attributes
    ----------
    out_dir : Path
        The features directory (``part-*.parquet`` + ``_manifest.json``).
    n_rows : int
        Samples featurised (all shards).
    n_shards : int
        Shard files.
    n_skipped : int
        Shards found complete from an earlier run and not recomputed.
    seconds : float
        Wall time of this call.
    """

    out_dir: Path
    n_rows: int
    n_shards: int
    n_skipped: int
    seconds: float


def _shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"part-{shard:05d}.parquet"


class _FeatureActor:
    """Ray Data callable class: loads the model once, then featurises whole shards."""

    def __init__(
        self, cfg, model, task, model_path, adapter_path, out_dir, crash_once_file=None,
        hold_file=None,
    ):  # fmt: skip
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.computer = FeatureComputer(
            cfg, model, task, Path(model_path), adapter_path and Path(adapter_path)
        )
        self.pool = pq.read_table(self.out_dir / "_pool.parquet")
        self.crash_once_file = crash_once_file
        self.hold_file = hold_file

    def _maybe_hold(self, node: str) -> None:
        """Test hook: while ``hold_file`` exists, wait before each shard (having created
        ``{hold_file}.{node id}``, so a test sees which nodes have an actor at work)."""
        if self.hold_file is None or not os.path.exists(self.hold_file):
            return
        Path(f"{self.hold_file}.{node}").touch()
        while os.path.exists(self.hold_file):
            time.sleep(0.05)

    def _maybe_crash(self, part: pa.Table) -> None:
        """Test hook: the first actor to get here computes half a shard, then dies hard."""
        if self.crash_once_file is None:
            return
        if not _first_to_claim(self.crash_once_file):
            return
        half = part.slice(0, max(1, part.num_rows // 2)).to_pydict()
        self.computer.compute(half["sample_id"], half["split"], half["prompt"], half["output"])
        os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        rows = []
        writers = []
        for shard in batch["shard"].tolist():
            part = self.pool.slice(shard * self.cfg.rows_per_shard, self.cfg.rows_per_shard)
            done = _shard_path(self.out_dir, shard)
            if done.is_file():  # written (atomically) before this task was retried, e.g. after
                # the node holding its result was lost: keep it rather than compute it again
                writers.append(pq.read_schema(done).metadata[SHARD_NODE_KEY].decode())
                rows.append(part.num_rows)
                continue
            self._maybe_hold(node)
            self._maybe_crash(part)
            _write_shard(self.computer, part, done, node)
            writers.append(node)
            rows.append(part.num_rows)
        return {
            "shard": batch["shard"],
            "rows": np.asarray(rows, dtype=np.int64),
            "node": np.asarray(writers, dtype=object),
        }


def _write_shard(computer: FeatureComputer, part: pa.Table, path: Path, node: str) -> None:
    """Featurise the pool rows ``part`` and write them to ``path`` (atomically), naming the
    writer ``node`` in the schema metadata."""
    cols = part.to_pydict()
    table = computer.compute(cols["sample_id"], cols["split"], cols["prompt"], cols["output"])
    meta = {**(table.schema.metadata or {}), SHARD_NODE_KEY: node.encode()}
    write_parquet(path, table.replace_schema_metadata(meta))


class _GroupFeatureActor:
    """One rank of a features group: k actors hold one model partitioned with ZeRO-3 and
    featurise k shards per round, one each, in lockstep (:class:`FeatureComputer` ``group``)."""

    def __init__(self, cfg, model, task, model_path, adapter_path, out_dir, crash_once_file=None):
        self.args = (cfg, model, task, Path(model_path), adapter_path and Path(adapter_path))
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.computer: FeatureComputer | None = None
        self.crash_once_file = crash_once_file

    def meeting_point(self) -> tuple[str, int]:
        """(this node's IP, a port free on it): where rank 0 hosts the group's rendezvous."""
        import ray

        from goracs_ray.raycluster import free_port

        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def join(self, group) -> dict[str, int]:
        """Join ``group`` (a ZeroGroup) and load the partitioned model; returns
        :meth:`FeatureComputer.param_bytes` (every rank of the group must call this)."""
        import warnings

        # DeepSpeed's ZeRO-3 gathers call a torch.distributed function torch deprecates, once
        # per process; nothing a user can act on.
        warnings.filterwarnings("ignore", ".*all_gather_into_tensor", FutureWarning)
        self.computer = FeatureComputer(*self.args, group=group)
        self.pool = pq.read_table(self.out_dir / "_pool.parquet")
        return self.computer.param_bytes()

    def compute_shard(self, shard: int | None) -> tuple[int | None, int, str]:
        """Featurise ``shard`` (None, or one already written: only keep the group in step).

        Returns (shard, rows, writer node id)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        done = shard is not None and _shard_path(self.out_dir, shard)
        if shard is None or done.is_file():
            self.computer.compute([], [], [], [])
            if shard is None:
                return None, 0, node
            writer = pq.read_schema(done).metadata[SHARD_NODE_KEY].decode()
            return shard, pq.read_metadata(done).num_rows, writer
        part = self.pool.slice(shard * self.cfg.rows_per_shard, self.cfg.rows_per_shard)
        if self.crash_once_file is not None and _first_to_claim(self.crash_once_file):
            os._exit(1)  # test hook: this rank dies at the start of a shard, its peer mid-round
        _write_shard(self.computer, part, done, node)
        return shard, part.num_rows, node


def _first_to_claim(path: str) -> bool:
    """Create ``path``; True only for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class _ActorGroup:
    """k :class:`_GroupFeatureActor` ranks in one placement group (PACK: one node where they
    fit), started together and killed together."""

    def __init__(self, cfg, model, task, model_path, adapter, out_dir, gpus, ds_config, crash):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        k = cfg.model_shards
        bundle = {"CPU": cfg.actor_cpus, **({"GPU": gpus} if gpus else {})}
        self.pg = placement_group([bundle] * k, strategy="PACK")
        cls = ray.remote(_GroupFeatureActor)
        self.actors = [
            cls.options(
                num_cpus=cfg.actor_cpus,
                num_gpus=gpus or 0,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i),
            ).remote(
                cfg, model, task, str(model_path), adapter and str(adapter), str(out_dir), crash
            )  # fmt: skip
            for i in range(k)
        ]
        self.bundle, self.ds_config = bundle, ds_config

    def start(self, timeout_s: float) -> dict[str, int]:
        """Wait for the group's resources, then join every rank; its param bytes per rank."""
        import ray

        from goracs_ray.features.compute import ZeroGroup

        k = len(self.actors)
        if not ray.wait([self.pg.ready()], timeout=timeout_s)[0]:
            self.kill()
            raise RuntimeError(
                f"a features group of {k} actors ({self.bundle} each; `features.model_shards: "
                f"{k}`) did not fit the cluster within {timeout_s:.0f} s; lower "
                "`features.actor_cpus`/`actor_gpus` or `model_shards`, or add nodes"
            )
        addr, port = ray.get(self.actors[0].meeting_point.remote())
        groups = [ZeroGroup(r, k, addr, port, self.ds_config) for r in range(k)]
        held = ray.get([a.join.remote(g) for a, g in zip(self.actors, groups)])
        return held[0]

    def kill(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.pg)


#: How often a features group may be restarted after losing an actor (each restart retries the
#: shards of the round it lost; a shard written before is kept).
MAX_GROUP_RESTARTS = 3


def _round_outcome(refs, grace_s: float = 10.0):
    """Outcome of one group round, read as the ranks finish: (results, the error of a lost
    actor or None, a task error or None). Returns at the first lost actor, without waiting for
    its peers (they may be blocked in a collective; the caller kills the group). After a task
    error, waits ``grace_s`` for a lost actor to explain it (a rank whose peer died fails in
    gloo/NCCL), else returns: the other ranks may be waiting for the failed one."""
    import ray

    pending, results, failed = list(refs), [], None
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=grace_s if failed else None)
        if not done:
            break
        try:
            results.append(ray.get(done[0]))
        except ray.exceptions.RayActorError as exc:
            return results, exc, failed
        except ray.exceptions.RayTaskError as exc:
            failed = failed or exc
    return results, None, failed


def _drain_groups(
    cfg, model, task, todo, model_path, adapter, out_dir, pool_rows, *, progress, gpus, crash
):
    """Featurise the shards ``todo`` on ``max_actors // model_shards`` ZeRO-3 groups (≥ 1).

    Returns ({shard: writer node}, param bytes per worker of one group)."""
    import ray
    from tqdm.auto import tqdm

    k = cfg.model_shards
    ds_config = model.features_zero3_config(k)
    queue = list(todo)

    def new_group() -> _ActorGroup:
        return _ActorGroup(cfg, model, task, model_path, adapter, out_dir, gpus, ds_config, crash)

    groups = [new_group() for _ in range(max(1, cfg.max_actors // k))]
    held = groups[0].start(timeout_s=300)
    for extra in groups[1:]:  # more groups only where the cluster has room now
        try:
            extra.start(timeout_s=30)
        except RuntimeError:
            logger.warning("features: only %d group(s) of %d actors fit", groups.index(extra), k)
            groups = groups[: groups.index(extra)]
            break
    logger.info(
        "features: %d group(s) of %d actors, each holding %.1f of the model's %.1f MiB of "
        "weights (ZeRO-3)", len(groups), k, held["held"] / 2**20, held["whole"] / 2**20,
    )  # fmt: skip
    running: dict[ray.ObjectRef, tuple[_ActorGroup, list]] = {}
    nodes: dict[int, str] = {}
    restarts = 0

    def dispatch(group: _ActorGroup) -> None:
        shards = [queue.pop(0) if queue else None for _ in group.actors]
        if all(s is None for s in shards):
            group.kill()
            return
        refs = [a.compute_shard.remote(s) for a, s in zip(group.actors, shards)]
        for ref in refs:
            running[ref] = (group, refs, shards)

    total = sum(pool_rows(s) for s in todo)
    with tqdm(total=total, unit="sample", desc="features", disable=not progress) as bar:
        for group in groups:
            dispatch(group)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            group, refs, shards = running[ready[0]]
            for ref in refs:
                running.pop(ref)
            results, lost_actor, failed = _round_outcome(refs)
            if failed is not None and lost_actor is None:  # an error of the computation itself
                group.kill()
                raise failed
            if lost_actor is not None:
                exc = lost_actor
                group.kill()
                restarts += 1
                if restarts > MAX_GROUP_RESTARTS:
                    raise RuntimeError(
                        f"features: a ZeRO-3 group failed {restarts} times, last: {exc}; "
                        "re-run to resume from the shards written"
                    ) from exc
                lost = [s for s in shards if s is not None and s not in nodes]
                logger.warning("features: a group lost an actor (%s); restarting it, "
                               "retrying shards %s", type(exc).__name__, lost)  # fmt: skip
                queue[:0] = lost
                group = new_group()
                group.start(timeout_s=300)
                dispatch(group)
                continue
            for shard, rows, node in results:
                if shard is not None and shard not in nodes:
                    nodes[shard] = node
                    bar.update(rows)
            dispatch(group)
    return nodes, held


def _load_pool(samples, splits: tuple[str, ...]) -> tuple[pa.Table, set[str]]:
    """(N,) table sample_id, split, prompt, output from a samples dir or a Ray Dataset, and the
    set of values of its ``task`` column (empty when it has none)."""
    need = ["sample_id", "instruction", "input", "output"]
    if isinstance(samples, (str, os.PathLike)):
        tables = []
        for split in splits:
            path = Path(samples) / f"{split}.parquet"
            if not path.is_file():
                raise FileNotFoundError(f"samples file `{path}` not found; run `goracs prepare`")
            has_task = "task" in pq.read_schema(path).names
            tables.append(pq.read_table(path, columns=need + ["task"] * has_task))
            if not has_task:
                tables[-1] = tables[-1].append_column("task", pa.nulls(tables[-1].num_rows))
            tables[-1] = tables[-1].append_column("split", pa.array([split] * tables[-1].num_rows))
        table = pa.concat_tables(tables, promote_options="default")
    else:
        import ray

        need = [*need, "split"]
        missing = [c for c in need if c not in samples.columns()]
        if missing:
            raise ValueError(f"the Ray Dataset `samples` lacks column(s) {missing}")
        cols = need + ["task"] * ("task" in samples.columns())
        table = pa.concat_tables(ray.get(samples.select_columns(cols).to_arrow_refs()))
        table = table.filter(pa.compute.is_in(table["split"], pa.array(list(splits))))
    tasks = set()
    if "task" in table.column_names:
        tasks = {t for t in table["task"].to_pylist() if t is not None}
    prompts = [
        format_prompt(i, x)
        for i, x in zip(table["instruction"].to_pylist(), table["input"].to_pylist())
    ]
    ids = table["sample_id"].cast(pa.string())
    if len(set(ids.to_pylist())) != table.num_rows:
        raise ValueError("`samples` has duplicate sample_id values; ids must be unique")
    pool = pa.table(
        {"sample_id": ids, "split": table["split"], "prompt": prompts, "output": table["output"]}
    )
    return pool, tasks


def _resolve_task(task: Task | str | None, found: set[str]) -> Task:
    """``task``, or the samples' one ``task`` value."""
    if task is not None:
        task = Task(task)
        if found and found != {task.value}:
            raise ValueError(f"task {task.value!r} given, but the samples are {sorted(found)}")
        return task
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the task from the samples (task values {sorted(found)}); pass "
            "task='seqrec' or 'ctr' (`goracs features --task`)"
        )
    return Task(found.pop())


def _fingerprint(cfg: FeaturesConfig, model: ModelConfig, task: Task, pool: pa.Table) -> dict:
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_RESULT_FIELDS}
    model_settings = {k: v for k, v in to_dict(model).items() if k not in _NOT_RESULT_MODEL_FIELDS}
    if model.path is not None:
        model_settings.pop("tiny")
        model_settings.pop("seed")
    digest = hashlib.sha256("\n".join(pool["sample_id"].to_pylist()).encode()).hexdigest()
    return {
        "n_rows": pool.num_rows,
        "ids_sha256": digest,
        "task": task.value,
        "settings": settings,
        "model": model_settings,
    }


def _prepare_out_dir(cfg, model, task, samples, out_dir: Path, overwrite: bool):
    import shutil

    pool, found = _load_pool(samples, tuple(cfg.splits))
    if pool.num_rows == 0:
        raise ValueError(f"`samples` has no rows in splits {list(cfg.splits)}")
    task = _resolve_task(task, found)
    fp = _fingerprint(cfg, model, task, pool)
    run_file = out_dir / "_run.json"
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    if run_file.is_file() and json.loads(json.dumps(fp)) != read_json(run_file):
        raise FileExistsError(
            f"`{out_dir}` holds features of other samples/settings; pass --overwrite "
            "(overwrite=True) to recompute, or choose another output dir"
        )
    if not run_file.is_file():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"`{out_dir}` exists and is not a features dir; pass --overwrite")
        out_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(out_dir / "_pool.parquet", pool)
        write_json(run_file, fp)
    return pool, task


def _resolve_model(
    cfg: FeaturesConfig, model: ModelConfig, samples, pool: pa.Table, out_dir: Path
) -> tuple[Path, Path | None]:
    from goracs_ray.models.tiny import build_model

    model_path = model.local_path
    if model_path is None:
        model_path = out_dir / "tiny_model"
        if not (model_path / "config.json").is_file():
            if not isinstance(samples, (str, os.PathLike)):
                raise ValueError(
                    "`model.path` is not set and `samples` is a Ray Dataset, which carries no "
                    "catalog to build the tiny model from; set `model.path`"
                )
            build_model(model, samples, model_path, overwrite=True)
    adapter = model.adapter_path
    if adapter is None and cfg.warmup_steps > 0:
        adapter = out_dir / "warmup_adapter"
        if not (adapter / "adapter_config.json").is_file():
            train = pool.filter(pa.compute.equal(pool["split"], "train"))
            warmup_adapter(
                cfg,
                model.lora,
                model_path,
                train["prompt"].to_pylist(),
                train["output"].to_pylist(),
                adapter,
            )
    return Path(model_path), adapter and Path(adapter)


def _run_pool(
    cfg, model, task, todo, model_path, adapter, out_dir, pool_rows, *, progress, crash, hold
):
    import ray

    from goracs_ray.raycluster import ensure_ray

    ensure_ray()
    gpus = cfg.actor_gpus
    if gpus is None:
        gpus = 1.0 if model.wants_gpu(ray.cluster_resources().get("GPU", 0) > 0) else 0.0
    progress = sys.stderr.isatty() if progress is None else progress
    if cfg.model_shards > 1:
        return _drain_groups(cfg, model, task, todo, model_path, adapter, out_dir, pool_rows,
                             progress=progress, gpus=gpus, crash=crash)  # fmt: skip
    # Our own bar counts samples; when it shows, Ray Data's bars would repeat it.
    with _ray_data_bars_off() if progress else contextlib.nullcontext():
        nodes = _drain_pool(cfg, model, task, todo, model_path, adapter, out_dir, pool_rows,
                            progress=progress, crash=crash, hold=hold, gpus=gpus)  # fmt: skip
    return nodes, None


@contextlib.contextmanager
def _ray_data_bars_off():
    """Ray Data's own progress bars off for this block only (the user's setting is restored)."""
    import ray

    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = shown


def _drain_pool(
    cfg, model, task, todo, model_path, adapter, out_dir, pool_rows, *, progress, crash, hold, gpus
):
    import ray
    from tqdm.auto import tqdm

    ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        _FeatureActor,
        fn_constructor_kwargs={
            "cfg": cfg,
            "model": model,
            "task": task,
            "model_path": str(model_path),
            "adapter_path": adapter and str(adapter),
            "out_dir": str(out_dir),
            "crash_once_file": crash,
            "hold_file": hold,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=cfg.min_actors, max_size=cfg.max_actors),
        num_cpus=cfg.actor_cpus,
        num_gpus=gpus or None,
    )
    nodes: dict[int, str] = {}
    total = sum(pool_rows(s) for s in todo)
    with tqdm(total=total, unit="sample", desc="features", disable=not progress) as bar:
        for row in ds.iter_rows():
            shard = int(row["shard"])
            if shard not in nodes:
                nodes[shard] = str(row["node"])
                bar.update(int(row["rows"]))
    return nodes


def compute_features(
    cfg: FeaturesConfig,
    samples,
    out_dir: str | os.PathLike[str],
    *,
    model: ModelConfig | str | os.PathLike[str] | None = None,
    task: Task | str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    crash_once_file: str | None = None,
    hold_file: str | None = None,
) -> FeaturesResult:
    """Featurise ``cfg.splits`` of ``samples`` on a Ray actor pool into resumable shards.

    Parameters
    ----------
    cfg : FeaturesConfig
    samples : path or ray.data.Dataset
        A samples dir (``{split}.parquet`` in SAMPLE_SCHEMA) or a Dataset with columns
        sample_id, split, instruction, input, output.
    out_dir : path
        Features dir (layout in the module docstring). An unfinished run with the same samples
        and settings is resumed; other contents need ``overwrite``.
    model : ModelConfig or path, optional
        The base model, its LoRA adapter, dtype, device and DeepSpeed choice (a path stands for
        ``ModelConfig(path=...)``). Default ``ModelConfig()``: no path, so the tiny model is
        built from the samples dir's catalog into ``out_dir/tiny_model``.
    task : Task or str, optional
        The loss (``seqrec`` token mean, ``ctr`` Yes/No). Default: the samples' ``task`` column.
    overwrite : bool
        Delete ``out_dir`` first.
    progress : bool, optional
        tqdm progress bar (None: only on a TTY).
    crash_once_file : str, optional
        Test hook for fault injection: the first actor that creates this file mid-shard exits
        with ``os._exit(1)``.
    hold_file : str, optional
        Test hook for elasticity tests: while this file exists, actors wait before each shard,
        each having created ``{hold_file}.{its node id}``.

    Returns
    -------
    FeaturesResult
    """
    from goracs_ray.models.config import as_model_config

    start = time.perf_counter()
    out_dir = Path(out_dir)
    model = ModelConfig() if model is None else as_model_config(model)
    model.check_paths()
    samples_path = samples if isinstance(samples, (str, os.PathLike)) else None
    check_output(out_dir, [samples_path, model.path, model.adapter_path], overwrite=True)
    pool, task = _prepare_out_dir(cfg, model, task, samples, out_dir, overwrite)
    n_shards = -(-pool.num_rows // cfg.rows_per_shard)
    todo = [s for s in range(n_shards) if not _shard_path(out_dir, s).is_file()]
    skipped = n_shards - len(todo)
    if skipped:
        logger.info("resuming: %d of %d shards already done", skipped, n_shards)
    model_path, adapter = _resolve_model(cfg, model, samples, pool, out_dir)
    nodes: dict[int, str] = {}
    param_bytes = None
    if cfg.model_shards > 1:
        model.features_zero3_config(cfg.model_shards)  # a bad setting fails before any work
    if todo:

        def pool_rows(s: int) -> int:
            return min(cfg.rows_per_shard, pool.num_rows - s * cfg.rows_per_shard)

        nodes, param_bytes = _run_pool(
            cfg,
            model,
            task,
            todo,
            model_path,
            adapter,
            out_dir,
            pool_rows,
            progress=progress,
            crash=crash_once_file,
            hold=hold_file,
        )
    missing = [s for s in range(n_shards) if not _shard_path(out_dir, s).is_file()]
    if missing:
        raise RuntimeError(f"features shards {missing[:5]} were not written; re-run to resume")
    seconds = time.perf_counter() - start
    _write_manifest(
        cfg, model, task, out_dir, pool, n_shards, model_path, adapter, seconds, skipped, nodes,
        param_bytes,
    )  # fmt: skip
    return FeaturesResult(out_dir, pool.num_rows, n_shards, skipped, seconds)


def _write_manifest(
    cfg, model, task, out_dir, pool, n_shards, model_path, adapter, seconds, skipped, nodes,
    param_bytes=None,
) -> None:  # fmt: skip
    import collections

    import torch
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(model_path)
    first = pq.read_schema(_shard_path(out_dir, 0))
    emb_dim = first.field("embedding").type
    manifest = {
        "n_rows": pool.num_rows,
        "splits": {
            s: int(pa.compute.sum(pa.compute.equal(pool["split"], s)).as_py() or 0)
            for s in cfg.splits
        },
        "shards": [_shard_path(out_dir, s).name for s in range(n_shards)],
        "columns": first.names,
        "embedding_type": str(emb_dim),
        "model_path": str(model_path),
        "model_type": model_cfg.model_type,
        "adapter_path": adapter and str(adapter),
        "task": task.value,
        "config": to_dict(cfg),
        "model": to_dict(model),
        "seconds": round(seconds, 2),
        "compute_seconds": _compute_seconds(out_dir, n_shards),
        "column_bytes": _column_bytes(_shard_path(out_dir, 0), pool.num_rows),
        "throughput_samples_per_s": round(pool.num_rows / max(seconds, 1e-9), 2),
        "shards_skipped_on_resume": skipped,
        "shards_by_node": dict(collections.Counter(nodes.values())),
        # ZeRO-3 groups (model_shards > 1): weight bytes one actor held, and the whole model's
        "param_bytes": param_bytes,
        "torch_version": torch.__version__,
    }
    write_json(out_dir / FEATURES_MANIFEST, manifest)
    _log_costs(cfg, manifest)


def _compute_seconds(out_dir: Path, n_shards: int) -> dict[str, float]:
    """Actor seconds per part (gradients, projection, embedding), summed over the shards."""
    total: dict[str, float] = {}
    for s in range(n_shards):
        meta = pq.read_schema(_shard_path(out_dir, s)).metadata or {}
        for part, sec in json.loads(meta.get(SECONDS_METADATA_KEY, b"{}")).items():
            total[part] = total.get(part, 0.0) + sec
    return {part: round(sec, 4) for part, sec in total.items()}


def _column_bytes(first_shard: Path, n_rows: int) -> dict[str, int]:
    """In-memory bytes of each float column over all rows: N × width × 4 for float32, the width
    of a list column (embedding (d,), grad_proj (k,)) read off the first shard's first row."""
    table = pq.read_table(first_shard)
    out = {}
    for field in table.schema:
        t = field.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
            if pa.types.is_floating(t.value_type) and table.num_rows:
                width = len(table.column(field.name)[0].values)
                out[field.name] = n_rows * width * t.value_type.bit_width // 8
        elif pa.types.is_floating(t):
            out[field.name] = n_rows * t.bit_width // 8
    return out


def _log_costs(cfg: FeaturesConfig, manifest: dict) -> None:
    """One line: where the actors' time went, and what ``proj_dim`` cost (time and bytes)."""
    sec, nbytes = manifest["compute_seconds"], manifest["column_bytes"]
    busy = sum(sec.values()) or 1e-9
    line = ", ".join(f"{part} {s:.1f} s" for part, s in sec.items() if part != "projection")
    if cfg.proj_dim:
        line += (
            f"; projection k={cfg.proj_dim} {sec.get('projection', 0.0):.1f} s "
            f"({100 * sec.get('projection', 0.0) / busy:.0f} % of actor time), "
            f"grad_proj {nbytes.get('grad_proj', 0) / 2**20:.1f} MiB "
            "(read by the `less` baseline only; GORACS uses grad_norm)"
        )
    logger.info("features of %d samples: %s", manifest["n_rows"], line)
