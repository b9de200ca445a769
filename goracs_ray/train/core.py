"""Ray-free fine-tuning steps: batches, one training epoch, the validation loss, early stopping,
and adapter/optimiser state on disk. The Ray Train shell (`goracs_ray.train.worker`) calls these.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from goracs_ray.data.prompts import format_prompt
from goracs_ray.data.schema import Task
from goracs_ray.models.losses import causal_lm_loss, ctr_loss, loss_window
from goracs_ray.models.text import LossOn, tokenize_samples

__all__ = [
    "SAMPLE_COLUMNS",
    "DeepSpeedStepper",
    "EarlyStopping",
    "TorchStepper",
    "batch_losses",
    "collate",
    "eval_loss",
    "global_mean",
    "train_epoch",
    "warmup_schedule",
    "write_adapter",
]

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("instruction", "input", "output")
"""Sample columns the fine-tuning batches need (SAMPLE_SCHEMA names)."""


def collate(
    tokenizer, rows: Mapping[str, Any], *, max_length: int, train_on_inputs: bool = False
) -> dict[str, torch.Tensor]:
    """Tokenise a batch of sample rows (``instruction``, ``input``, ``output`` arrays of B str).

    Returns ``input_ids``, ``attention_mask``, ``labels`` : (B, T) int64; the loss is on the
    answer only (BIGRec/TALLRec ``train_on_inputs=False``) unless ``train_on_inputs``.
    """
    prompts = [format_prompt(str(i), str(x)) for i, x in zip(rows["instruction"], rows["input"])]
    outputs = [str(o) for o in rows["output"]]
    loss_on = LossOn.ALL if train_on_inputs else LossOn.RESPONSE
    return tokenize_samples(tokenizer, prompts, outputs, max_length=max_length, loss_on=loss_on)


def batch_losses(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    task: Task,
    yes_no_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) per-sample loss: SeqRec causal-LM loss on the answer; CTR 2-way Yes/No loss.

    ``yes_no_ids`` : (2,) int64 ``[no_id, yes_id]`` (``models.losses.ctr_token_ids``), CTR only.
    """
    if task is Task.CTR and yes_no_ids is None:
        raise ValueError("`yes_no_ids` is required for the CTR loss")
    # The LM head runs only on the final positions that hold answers (right padding): on the
    # BIGRec prompts that is about a tenth of the sequence, and fine-tuning is ~1.5x faster.
    keep = loss_window(batch["labels"])
    labels = batch["labels"][:, -keep:]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits
    if task is Task.CTR:
        return ctr_loss(logits, labels, yes_no_ids)
    return causal_lm_loss(logits, labels)


class TorchStepper:
    """Backward/step for a plain (DDP) model: gradient accumulation, clipping, AdamW."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        grad_accum: int,
        grad_clip: float,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self._micro = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()
        self._micro += 1
        if self._micro % self.grad_accum == 0:
            self._step()

    def flush(self) -> None:
        """Apply any gradients accumulated since the last step (epoch end)."""
        if self._micro % self.grad_accum:
            self._step()
        self._micro = 0

    def _step(self) -> None:
        if self.grad_clip > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


class DeepSpeedStepper:
    """Backward/step through a DeepSpeed engine (accumulation and clipping inside DeepSpeed)."""

    def __init__(self, engine) -> None:
        self.model = engine

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()

    def flush(self) -> None:
        """Nothing: DeepSpeed steps at its own accumulation boundaries."""


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """Linear warm-up of the learning rate over ``warmup_steps`` optimiser steps, then constant
    (None when ``warmup_steps`` is 0). Its ``state_dict`` goes into the checkpoints."""
    if warmup_steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)
    )


def train_epoch(
    stepper: TorchStepper | DeepSpeedStepper,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    task: Task,
    yes_no_ids: torch.Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """One pass over ``batches``; returns (sum of per-sample losses, number of samples).

    ``on_step(i)`` is called after the i-th micro-batch (progress, tests' fault injection).
    """
    stepper.model.train()
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        losses = batch_losses(stepper.model, batch, task=task, yes_no_ids=yes_no_ids)
        stepper.backward(losses.mean())
        total += float(losses.detach().sum())
        count += int(losses.shape[0])
        if on_step is not None:
            on_step(i)
    stepper.flush()
    return total, count


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    task: Task,
    yes_no_ids: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Validation pass; returns (sum of per-sample losses, number of samples)."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        losses = batch_losses(model, batch, task=task, yes_no_ids=yes_no_ids)
        total += float(losses.sum())
        count += int(losses.shape[0])
    return total, count


def global_mean(total: float, count: int) -> float:
    """Mean over all workers of a (sum, count) pair (all-reduce when torch.distributed is up)."""
    t = torch.tensor([total, float(count)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    s, n = t.tolist()
    return s / n if n > 0 else math.nan


@dataclass
class EarlyStopping:
    """Patience on the validation loss; serialisable into checkpoints."""

    patience: int | None
    """Epochs without improvement tolerated (None: never stop early)."""
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    """Metrics reported for each finished epoch, in order."""

    def update(self, epoch: int, valid_loss: float) -> bool:
        """Record ``valid_loss`` of ``epoch``; True when it is the best so far."""
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_nan_safe)

    @classmethod
    def from_json(cls, text: str) -> EarlyStopping:
        return cls(**json.loads(text))


def _nan_safe(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj).__name__)


def write_adapter(peft_config, state: Mapping[str, torch.Tensor], out_dir: Path) -> Path:
    """Write a normal peft adapter dir: ``adapter_config.json`` + ``adapter_model.safetensors``.

    ``state`` is ``peft.get_peft_model_state_dict(model)`` (LoRA tensors only).
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out_dir))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()},
        str(out_dir / "adapter_model.safetensors"),
    )
    return out_dir
