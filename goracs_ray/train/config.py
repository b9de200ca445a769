"""`TrainConfig`: everything the fine-tuning stage reads from the YAML ``train:`` section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """LoRA fine-tuning on Ray Train (optionally through DeepSpeed ZeRO).

    The adapter (LoRA settings or a start adapter), device and DeepSpeed choice come from the
    ``model:`` section (:class:`~goracs_ray.models.config.ModelConfig`).
    """

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "lora": "model.lora",
        "adapter_path": "model.adapter_path",
        "use_gpu": "model.device",
        "deepspeed": "model.deepspeed",
    }

    epochs: int = 3
    """Maximum number of passes over the training samples."""
    lr: float = 1e-4
    """AdamW learning rate (reference: 1e-4 SeqRec, 1e-5 CTR)."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up from 0 to ``lr`` (then constant)."""
    train_on_inputs: bool = False
    """BIGRec's option: SeqRec loss on the prompt tokens too, not only on the answer (the
    validation loss, used for early stopping, stays on the answer). SeqRec only."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 8
    """Micro-batch size per worker (samples per forward pass)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; global batch = batch_size · grad_accum · workers."""
    eval_batch_size: int = 16
    """Batch size per worker for the validation loss."""
    max_valid_samples: int | None = None
    """Compute the per-epoch validation loss (early stopping) on only the first this many
    validation samples (None: all); bounds the cost of an epoch for small coresets."""
    max_length: int = 256
    """Token cap per sample (prompt + answer); longer prompts are cut from the left."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold (0 disables)."""
    num_workers: int = 2
    """Ray Train workers (the maximum when ``min_workers`` is set)."""
    min_workers: int | None = None
    """Set to enable elastic training: Ray Train runs with between ``min_workers`` and
    ``num_workers`` workers, resizing as the cluster grows or shrinks."""
    resize_check_s: float = 60.0
    """Elastic runs: seconds between Ray Train's checks for room to add workers while training
    (``ScalingConfig.elastic_resize_monitor_interval_s``); growing restarts the workers from the
    latest checkpoint, so short intervals cost restarts on a busy cluster."""
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per worker (fractional values let small machines run 2 workers)."""
    torch_threads: int | None = None
    """torch intra-op threads per worker (None: ``cpus_per_worker`` rounded down, at least 1).
    More threads than reserved CPUs make workers that share cores spin against each other:
    measured on 2 cores under load, 2 threads cost 3.3x the CPU time per sample of 1."""
    patience: int | None = 2
    """Early stopping: stop after this many epochs without a lower validation loss (None: never)."""
    max_failures: int = 2
    """Worker-group failures Ray Train recovers from (restarting from the latest checkpoint)."""
    checkpoints_to_keep: int = 2
    """Epoch checkpoints kept in the Ray storage (the latest one is always kept)."""
    storage_path: str | None = None
    """Ray Train storage (local path or pyarrow URI such as ``s3://bucket/x``); default
    ``<out_dir>/checkpoints``. Must be reachable from every node on a multi-node cluster."""
    seed: int = 0
    """Seeds LoRA initialisation, data order and dropout."""

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "grad_accum", "eval_batch_size", "max_length")
        for name in (*positive, "num_workers", "checkpoints_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"`train.{name}` must be ≥ 1, got {getattr(self, name)}")
        for name in ("lr", "cpus_per_worker"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`train.{name}` must be > 0, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"`train.torch_threads` must be ≥ 1 or null, got {self.torch_threads}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"`train.{name}` must be ≥ 0, got {getattr(self, name)}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"`train.min_workers` must be between 1 and `train.num_workers` "
                f"({self.num_workers}), got {self.min_workers}; or null for a fixed size"
            )
        if not self.resize_check_s >= 0:
            raise ValueError(f"`train.resize_check_s` must be ≥ 0, got {self.resize_check_s}")
        if self.warmup_steps < 0:
            raise ValueError(f"`train.warmup_steps` must be ≥ 0, got {self.warmup_steps}")
        if self.max_valid_samples is not None and self.max_valid_samples < 1:
            raise ValueError(
                f"`train.max_valid_samples` must be ≥ 1 or null, got {self.max_valid_samples}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`train.patience` must be ≥ 1 or null, got {self.patience}")
        if self.max_failures < -1:
            raise ValueError(
                f"`train.max_failures` must be ≥ -1 (-1: unlimited), got {self.max_failures}"
            )

    @property
    def worker_threads(self) -> int:
        """torch intra-op threads of one training worker (``torch_threads`` resolved)."""
        return self.torch_threads or max(1, int(self.cpus_per_worker))

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
