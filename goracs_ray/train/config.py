"""`TrainConfig`: everything the fine-tuning stage reads from the YAML ``train:`` section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from goracs_ray.models.lm import LoraSettings

__all__ = ["TrainConfig"]

AUTO = "auto"


@dataclass
class TrainConfig:
    """LoRA fine-tuning on Ray Train (optionally through DeepSpeed ZeRO)."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA rank, alpha, dropout and target modules (METHOD.md §6: r 8, α 16, 0.05, q/v_proj)."""
    epochs: int = 3
    """Maximum number of passes over the training samples."""
    lr: float = 1e-4
    """AdamW learning rate (reference: 1e-4 SeqRec, 1e-5 CTR)."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up from 0 to ``lr`` (then constant)."""
    train_on_inputs: bool = False
    """BIGRec's option: SeqRec loss on the prompt tokens too, not only on the answer (the
    validation loss, used for early stopping, stays on the answer). SeqRec only."""
    adapter_path: str | None = None
    """Start from this peft adapter dir (e.g. an instruction-tuned adapter, as the reference
    does) instead of a fresh ``lora`` adapter; its LoRA settings are used."""
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
    cpus_per_worker: float = 1.0
    """Logical CPUs reserved per worker (fractional values let small machines run 2 workers)."""
    torch_threads: int | None = None
    """torch intra-op threads per worker (None: ``cpus_per_worker`` rounded down, at least 1).
    More threads than reserved CPUs make workers that share cores spin against each other:
    measured on 2 cores under load, 2 threads cost 3.3x the CPU time per sample of 1."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); otherwise CPU training with gloo."""
    deepspeed: int | str | None = AUTO
    """DeepSpeed ZeRO: ``"auto"`` (stage 2 on GPU, plain DDP on CPU), ``None`` (plain DDP), a
    stage ``0``–``3`` (config generated) or the path of a user DeepSpeed JSON config."""
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
        if self.warmup_steps < 0:
            raise ValueError(f"`train.warmup_steps` must be ≥ 0, got {self.warmup_steps}")
        if self.max_valid_samples is not None and self.max_valid_samples < 1:
            raise ValueError(
                f"`train.max_valid_samples` must be ≥ 1 or null, got {self.max_valid_samples}"
            )
        if (
            self.adapter_path is not None
            and not (Path(self.adapter_path) / "adapter_config.json").is_file()
        ):
            raise FileNotFoundError(
                f"`train.adapter_path` `{self.adapter_path}` is not a peft adapter dir (no "
                "adapter_config.json); give the dir written by `goracs finetune` or peft"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`train.patience` must be ≥ 1 or null, got {self.patience}")
        if self.max_failures < -1:
            raise ValueError(
                f"`train.max_failures` must be ≥ -1 (-1: unlimited), got {self.max_failures}"
            )
        self._check_deepspeed()

    def _check_deepspeed(self) -> None:
        ds = self.deepspeed
        if isinstance(ds, bool):
            raise ValueError("`train.deepspeed` must be a stage 0–3, a JSON path, 'auto' or null")
        if isinstance(ds, int) and not 0 <= ds <= 3:
            raise ValueError(f"`train.deepspeed` stage must be 0–3, got {ds}")
        if isinstance(ds, str) and ds != AUTO and not Path(ds).is_file():
            raise FileNotFoundError(
                f"`train.deepspeed` = `{ds}` is neither 'auto' nor an existing DeepSpeed JSON "
                "file; give a stage 0–3, a JSON path, 'auto' or null"
            )

    @property
    def worker_threads(self) -> int:
        """torch intra-op threads of one training worker (``torch_threads`` resolved)."""
        return self.torch_threads or max(1, int(self.cpus_per_worker))

    @property
    def deepspeed_setting(self) -> int | Path | None:
        """The resolved DeepSpeed choice: a ZeRO stage, a user JSON path, or None (plain DDP)."""
        if self.deepspeed == AUTO:
            return 2 if self.use_gpu else None
        if isinstance(self.deepspeed, str):
            return Path(self.deepspeed)
        return self.deepspeed

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
