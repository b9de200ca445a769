"""Driver: `finetune` builds a Ray Train `TorchTrainer` and writes the best LoRA adapter."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from goracs_ray.configutil import to_dict
from goracs_ray.data.schema import Task
from goracs_ray.io import atomic_dir, check_output, portable_path, write_json
from goracs_ray.models.config import ModelConfig, as_model_config
from goracs_ray.train.config import TrainConfig
from goracs_ray.train.core import SAMPLE_COLUMNS
from goracs_ray.train.worker import EpochGate, FaultInjection, train_func

__all__ = ["finetune"]

logger = logging.getLogger(__name__)


def _as_dataset(samples: Any, name: str, *, limit: int | None = None):
    """A Parquet path or a Ray Dataset → Ray Dataset of the fine-tuning columns (its first
    ``limit`` rows when given), its row count and a fingerprint of its ids.

    The rows are read (or gathered from the Dataset's blocks) on the driver and put in the
    object store from there: a local path need not be visible from other nodes, and a worker
    node that leaves takes none of the training set with it. Memory: the samples' text, once,
    in the driver and in the object store of its node.
    """
    import pyarrow as pa
    import ray.data

    want = ["sample_id", *SAMPLE_COLUMNS]
    if isinstance(samples, (str, os.PathLike)):
        source = os.fspath(samples)  # a local file or dir, or a pyarrow URI (s3://, gs://)
        if "://" not in source and not Path(source).exists():
            raise FileNotFoundError(f"`{name}` Parquet `{source}` does not exist")
        columns = pq.ParquetDataset(source).schema.names
    elif isinstance(samples, ray.data.Dataset):
        columns = samples.schema().names
    else:
        raise TypeError(
            f"`{name}` must be a Parquet path or a ray.data.Dataset, got {type(samples)}"
        )
    missing = [c for c in want if c not in columns]
    if missing:
        raise ValueError(
            f"`{name}` lacks column(s) {', '.join(f'`{c}`' for c in missing)}; samples must follow "
            "goracs_ray.data.schema.SAMPLE_SCHEMA"
        )
    if isinstance(samples, ray.data.Dataset):
        blocks = ray.get(samples.select_columns(want).to_arrow_refs())
        table = pa.concat_tables(blocks) if blocks else pa.table({c: [] for c in want})
    else:
        table = pq.read_table(source, columns=want)
    if limit is not None:
        table = table.slice(0, limit)
    ids = table.column("sample_id").cast(pa.string()).to_pylist()
    fingerprint = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    ds = ray.data.from_arrow(table)
    # This dataset's own context (a copy, not the global one): no per-epoch ingest progress bars
    # from Ray Train's split coordinator for a table that is already in memory.
    ds.context.enable_progress_bars = False
    return ds, len(ids), fingerprint


# Fields that do not change the per-epoch trajectory: a run extended by more epochs, more patience
# or more failures allowed continues from the earlier run's latest checkpoint.
_RESUMABLE_CHANGES = (
    "epochs",
    "patience",
    "max_failures",
    "checkpoints_to_keep",
    "storage_path",
    "resize_check_s",
)


def _run_name(
    cfg: TrainConfig, task: Task, model: ModelConfig, samples: list[str], out_dir: Path
) -> str:
    """Stable per (trajectory-defining config, task, model, sample ids, ``out_dir``): a rerun of
    the same call resumes. ``out_dir`` keeps two calls apart that train on the same samples
    (two selection methods that chose the same coreset), which may run at the same time and
    would otherwise write and prune the same Ray Train run's checkpoints."""
    fields = {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE_CHANGES}
    model_fields = {k: v for k, v in to_dict(model).items() if k not in ("tiny", "seed", "path")}
    key = json.dumps(
        [
            fields,
            model_fields,
            task.value,
            str(model.resolved_path.resolve()),
            samples,
            str(out_dir.resolve()),
        ],
        sort_keys=True,
    )
    return "finetune-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _trainer(
    cfg: TrainConfig, *, use_gpu: bool, loop_config: dict, datasets: dict, storage: str, name: str
):
    import ray.train
    from ray.train.torch import TorchTrainer

    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    workers = cfg.num_workers if cfg.min_workers is None else (cfg.min_workers, cfg.num_workers)
    return TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=cfg.resize_check_s,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            # Ray Train's own lines follow the driver's `ray` log level (ray.init(logging_level=…)):
            # INFO by default, WARNING under the goracs CLI unless -v.
            logging_config=ray.train.LoggingConfig(
                log_level=logging.getLevelName(loop_config["log_level"])
            ),
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
        ),
        datasets=datasets,
    )


def finetune(
    cfg: TrainConfig,
    *,
    model: ModelConfig | str | os.PathLike[str],
    train_samples: Any,
    valid_samples: Any,
    out_dir: str | os.PathLike[str],
    task: Task | str,
    resume: bool = True,
    overwrite: bool = False,
    fault: FaultInjection | None = None,
    gate: EpochGate | None = None,
) -> Path:
    """LoRA fine-tuning on Ray Train; returns the adapter dir of the best validation epoch.

    Parameters
    ----------
    cfg : TrainConfig
    model : ModelConfig or path
        The base model (``path`` set: a HF causal-LM dir, e.g. from
        ``goracs_ray.models.tiny.build_model``), the LoRA adapter to train or the one to start
        from, the device (GPU workers) and DeepSpeed choice. A path stands for
        ``ModelConfig(path=...)``.
    train_samples, valid_samples : path or ray.data.Dataset
        SAMPLE_SCHEMA rows (Parquet file/dir or Dataset; ``instruction``, ``input``, ``output``
        are used). Each worker trains on an equal shard (remainder rows dropped per epoch).
    out_dir : path
        Writes ``adapter/`` (peft dir, atomically), ``train_metrics.json`` (per-epoch history) and,
        unless ``cfg.storage_path`` is set, ``checkpoints/`` (Ray Train storage).
    task : Task or str
        ``"seqrec"`` (causal-LM loss on the answer) or ``"ctr"`` (Yes/No 2-way loss).
    resume : bool
        Continue the Ray run of an identical earlier call (same ``out_dir`` too) from its latest
        checkpoint (default); False deletes that run's local checkpoints first.
    overwrite : bool
        Replace an existing ``out_dir/adapter``.
    fault : FaultInjection, optional
        Test hook that kills one worker once (fault-tolerance tests).
    gate : EpochGate, optional
        Test hook that holds the run at chosen epochs (elasticity tests).

    Returns
    -------
    Path
        ``out_dir/adapter`` — loadable with ``peft.PeftModel.from_pretrained``.
    """
    import ray

    from goracs_ray.raycluster import ensure_ray

    task, model, out_dir = Task(task), as_model_config(model), Path(out_dir)
    model_path = model.resolved_path
    paths = [s for s in (train_samples, valid_samples) if isinstance(s, (str, os.PathLike))]
    check_output(out_dir, [*paths, model_path, model.adapter_path], overwrite=True, flag="out_dir")
    adapter_dir = out_dir / "adapter"
    if adapter_dir.exists() and not overwrite:
        raise FileExistsError(f"`{adapter_dir}` already exists; pass overwrite=True to replace it")
    if cfg.train_on_inputs and task is Task.CTR:
        raise ValueError(
            "`train.train_on_inputs` applies to SeqRec only (the CTR loss is the 2-way Yes/No "
            "answer); set it to false"
        )
    ensure_ray()
    use_gpu = model.wants_gpu(ray.cluster_resources().get("GPU", 0) > 0)
    deepspeed = model.deepspeed_setting(use_gpu)
    train_ds, n_train, train_fp = _as_dataset(train_samples, "train_samples")
    valid_ds, n_valid, valid_fp = _as_dataset(
        valid_samples, "valid_samples", limit=cfg.max_valid_samples
    )
    min_workers = cfg.min_workers or cfg.num_workers
    if min(n_train, n_valid) < cfg.num_workers:
        raise ValueError(
            f"`train_samples` ({n_train}) and `valid_samples` ({n_valid}) need ≥ `num_workers` "
            f"({cfg.num_workers}) rows each; lower `train.num_workers`"
        )
    storage = cfg.storage_path or str(out_dir / "checkpoints")
    if "://" not in storage:  # Ray Train needs an absolute local path or a URI
        storage = str(Path(storage).resolve())
    name = _run_name(cfg, task, model, [train_fp, valid_fp], out_dir)
    if not resume and "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
    logger.info(
        "fine-tuning %s on %d samples (%d valid), %s-%d workers, DeepSpeed %s, run %s/%s",
        task.value,
        n_train,
        n_valid,
        min_workers,
        cfg.num_workers,
        deepspeed,
        storage,
        name,
    )
    loop_config = {
        "cfg": cfg,
        "model": model,
        "task": task.value,
        "model_path": str(model_path.resolve()),
        "use_gpu": use_gpu,
        "deepspeed": deepspeed,
        "fault": fault,
        "gate": gate,
        "log_level": logging.getLogger("ray.train").getEffectiveLevel(),
        "progress": sys.stderr.isatty(),  # a bar over epochs, drawn here, on a terminal only
    }
    trainer = _trainer(
        cfg,
        use_gpu=use_gpu,
        loop_config=loop_config,
        storage=storage,
        name=name,
        datasets={"train": train_ds, "valid": valid_ds},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "state.json").read_text())
        best = Path(ckpt) / "best_adapter"
        with atomic_dir(adapter_dir, overwrite=overwrite) as part:
            shutil.copytree(best, part, dirs_exist_ok=True)
    write_json(
        out_dir / "train_metrics.json",
        {
            "task": task.value,
            "best_epoch": state["best_epoch"],
            "best_valid_loss": state["best_loss"],
            "stopped_early": len(state["history"]) < cfg.epochs,
            "epochs": state["history"],
            "n_train": n_train,
            "n_valid": n_valid,
            "deepspeed": deepspeed,
            "ray_run": portable_path(f"{storage}/{name}", out_dir),  # relative to out_dir
            "config": to_dict(cfg),
            "model": to_dict(model),
        },
    )
    logger.info(
        "adapter of epoch %d (valid loss %.4f) written to %s",
        state["best_epoch"],
        state["best_loss"],
        adapter_dir,
    )
    return adapter_dir
