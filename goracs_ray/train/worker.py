"""Ray Train shell: the per-worker ``train_func`` run by `TorchTrainer` on every worker.

Each epoch: train on this worker's shard (``ray.train.get_dataset_shard("train")``), compute the
global validation loss, and report metrics plus a checkpoint through ``ray.train.report``. On
(re)start the latest checkpoint (``ray.train.get_checkpoint()``) restores the LoRA weights,
optimiser state and early-stopping state, so training resumes at the next epoch; each epoch's
data order and dropout seed depend on (seed, rank, epoch) alone, so it resumes where an
uninterrupted run would be.

Checkpoint layout (one directory per epoch, merged from all workers' uploads):
``adapter/`` (this epoch's LoRA), ``best_adapter/`` (lowest validation loss so far),
``state.json`` (epoch, early stopping, history), ``optimizer.pt`` + ``scheduler.pt`` (plain DDP,
the latter with warm-up) or ``ds/`` (DeepSpeed
engine checkpoint, frozen weights excluded, one optimiser shard per rank).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from goracs_ray.data.schema import Task
from goracs_ray.train.config import TrainConfig
from goracs_ray.train.core import (
    DeepSpeedStepper,
    EarlyStopping,
    TorchStepper,
    collate,
    eval_loss,
    global_mean,
    train_epoch,
    warmup_schedule,
    write_adapter,
)
from goracs_ray.train.ds_config import deepspeed_config

__all__ = ["PAUSE_ENV", "EpochGate", "FaultInjection", "train_func"]

logger = logging.getLogger(__name__)

_DS_TAG = "ds"

PAUSE_ENV = "GORACS_TRAIN_PAUSE_AFTER_EPOCH"
"""Test hook: once this epoch's checkpoint is committed, every worker sleeps (so a test can
SIGKILL the driver between two epochs). Read by the workers: set it where Ray starts them."""


@dataclass(frozen=True)
class FaultInjection:
    """Test hook: kill one training worker mid-epoch, once.

    The worker of ``rank`` exits abruptly (``os._exit``) after micro-batch ``step`` of ``epoch``
    if ``marker`` does not exist yet, creating it first, so the restarted run does not die again.
    It first waits until Ray Train has committed every checkpoint reported so far: the restart
    then resumes from the previous epoch's checkpoint. (Without the wait the worker may die
    before the controller has collected its last report; that checkpoint is then never
    registered and the restart trains from scratch.)
    """

    marker: str
    epoch: int = 1
    step: int = 0
    rank: int = 1

    def maybe_kill(self, *, rank: int, epoch: int, step: int) -> None:
        if (rank, epoch, step) == (self.rank, self.epoch, self.step) and not os.path.exists(
            self.marker
        ):
            _wait_for_commit()
            Path(self.marker).write_text(f"killed rank {rank} at epoch {epoch} step {step}\n")
            os._exit(1)


@dataclass(frozen=True)
class EpochGate:
    """Test hook for elasticity tests: holds the run at chosen epochs while a test changes the
    cluster.

    Before each epoch, rank 0 creates ``{directory}/epoch{e}-workers{w}`` (``w`` the world size
    it starts that epoch with), then every worker waits while ``{directory}/hold{e}`` exists.
    """

    directory: str

    def enter(self, *, rank: int, epoch: int, world_size: int) -> None:
        root = Path(self.directory)
        if rank == 0:
            (root / f"epoch{epoch}-workers{world_size}").touch()
        while (root / f"hold{epoch}").exists():
            time.sleep(0.1)


def _wait_for_commit() -> None:
    """Block until Ray Train has registered every checkpoint this worker reported."""
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
    )


def _maybe_pause(epoch: int) -> None:
    """The :data:`PAUSE_ENV` test hook, after ``epoch`` was reported."""
    pause = os.environ.get(PAUSE_ENV)
    if pause is not None and epoch == int(pause):
        _wait_for_commit()
        logger.warning("%s=%s: pausing (test hook)", PAUSE_ENV, pause)
        time.sleep(3600)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The torch seed of ``rank`` for ``epoch`` (dropout): a function of the epoch alone, so a
    run resumed from a checkpoint draws what an uninterrupted run draws, and workers differ."""
    digest = hashlib.sha256(f"{seed}/{rank}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _batches(
    shard,
    tokenizer,
    *,
    batch_size: int,
    max_length: int,
    device,
    seed: int | None,
    train_on_inputs: bool = False,
):
    shuffle = {"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": seed}
    for rows in shard.iter_batches(
        batch_size=batch_size, batch_format="numpy", **(shuffle if seed is not None else {})
    ):
        batch = collate(tokenizer, rows, max_length=max_length, train_on_inputs=train_on_inputs)
        yield {k: v.to(device) for k, v in batch.items()}


def _lora_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def _restore(model, ckpt_dir: Path) -> tuple[EarlyStopping, dict[str, torch.Tensor] | None]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt_dir / "adapter/adapter_model.safetensors")))
    stopper = EarlyStopping.from_json((ckpt_dir / "state.json").read_text())
    best_file = ckpt_dir / "best_adapter/adapter_model.safetensors"
    return stopper, (load_file(str(best_file)) if best_file.is_file() else None)


def _setup(cfg: TrainConfig, model, device, ckpt_dir: Path | None, *, use_gpu: bool, deepspeed):
    """Wrap the model (DDP or DeepSpeed), build AdamW and restore optimiser state."""
    import ray.train.torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ds_cfg = deepspeed_config(
        deepspeed,
        micro_batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        grad_clip=cfg.grad_clip,
        bf16=bf16,
    )
    if ds_cfg is None:
        wrapped = ray.train.torch.prepare_model(model)
        if ckpt_dir is not None:
            optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
            if scheduler is not None:
                state = torch.load(ckpt_dir / "scheduler.pt", weights_only=True)
                scheduler.load_state_dict(state)
        stepper = TorchStepper(
            wrapped,
            optimizer,
            grad_accum=cfg.grad_accum,
            grad_clip=cfg.grad_clip,
            scheduler=scheduler,
        )
        return stepper, ds_cfg
    import deepspeed

    if not use_gpu:
        # The shm all-reduce op would be JIT-compiled (minutes) on CPU; gloo does the job.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, *_ = deepspeed.initialize(
        model=model.to(device),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_cfg,
        dist_init_required=False,
    )
    if ckpt_dir is not None:
        engine.load_checkpoint(str(ckpt_dir / _DS_TAG), tag=_DS_TAG, load_module_strict=False)
    return DeepSpeedStepper(engine), ds_cfg


def _save_checkpoint(
    tmp: Path,
    *,
    rank: int,
    peft_model,
    stepper,
    ds_cfg,
    stopper: EarlyStopping,
    best: dict[str, torch.Tensor] | None,
) -> None:
    """Write this worker's part of the epoch checkpoint into ``tmp``."""
    zero3 = ds_cfg is not None and ds_cfg.get("zero_optimization", {}).get("stage") == 3
    if ds_cfg is not None:
        stepper.model.save_checkpoint(
            str(tmp / _DS_TAG), tag=_DS_TAG, exclude_frozen_parameters=True
        )
    if zero3:
        import deepspeed

        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable):
            state = _lora_state(peft_model)
    else:
        state = _lora_state(peft_model)
    if rank != 0:
        return
    peft_config = peft_model.peft_config["default"]
    write_adapter(peft_config, state, tmp / "adapter")
    if best is not None:
        write_adapter(peft_config, best, tmp / "best_adapter")
    if ds_cfg is None:
        torch.save(stepper.optimizer.state_dict(), tmp / "optimizer.pt")
        if stepper.scheduler is not None:
            torch.save(stepper.scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(stopper.to_json())


@dataclass
class _Worker:
    """What one worker holds for the whole run."""

    cfg: TrainConfig
    task: Task
    rank: int
    device: torch.device
    model: Any  # the peft model (unwrapped)
    tokenizer: Any
    stepper: TorchStepper | DeepSpeedStepper
    ds_cfg: dict[str, Any] | None
    yes_no: torch.Tensor | None
    fault: FaultInjection | None

    def epoch(self, epoch: int, train_shard, valid_shard) -> tuple[float, float]:
        """Train one epoch on this worker's shard; return the global (train, valid) losses."""
        cfg, fault, rank = self.cfg, self.fault, self.rank
        torch.manual_seed(epoch_seed(cfg.seed, rank, epoch))
        batches = _batches(
            train_shard,
            self.tokenizer,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            device=self.device,
            seed=cfg.seed + epoch,
            train_on_inputs=cfg.train_on_inputs,
        )
        on_step = None
        if fault is not None:

            def on_step(i: int) -> None:
                fault.maybe_kill(rank=rank, epoch=epoch, step=i)

        sums = train_epoch(
            self.stepper, batches, task=self.task, yes_no_ids=self.yes_no, on_step=on_step
        )
        valid = _batches(
            valid_shard,
            self.tokenizer,
            batch_size=cfg.eval_batch_size,
            max_length=cfg.max_length,
            device=self.device,
            seed=None,
        )
        vsums = eval_loss(self.stepper.model, valid, task=self.task, yes_no_ids=self.yes_no)
        return global_mean(*sums), global_mean(*vsums)


def _start(config: dict[str, Any]) -> tuple[_Worker, EarlyStopping, dict | None]:
    """Load the model, restore the latest checkpoint if any, wrap for DDP/DeepSpeed."""
    import ray.train
    import ray.train.torch

    from goracs_ray.models.lm import load_causal_lm
    from goracs_ray.models.losses import ctr_token_ids

    cfg: TrainConfig = config["cfg"]
    task = Task(config["task"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # identical LoRA init on every worker
    model, tokenizer = load_causal_lm(
        config["model_path"],
        lora=config["model"].lora,
        adapter_path=config["model"].adapter_path,
        attn_implementation="sdpa",  # 1.7x eager's training speed on CPU (tiny LLaMA, measured)
    )
    stopper, best = EarlyStopping(cfg.patience), None
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt:
        ckpt_dir = Path(ckpt) if ckpt else None
        if ckpt_dir is not None:
            stopper, best = _restore(model, ckpt_dir)
            logger.info("rank %d resumes after epoch %d", rank, len(stopper.history) - 1)
        stepper, ds_cfg = _setup(
            cfg,
            model,
            device,
            ckpt_dir,
            use_gpu=config["use_gpu"],
            deepspeed=config["deepspeed"],
        )
    yes_no = ctr_token_ids(tokenizer).to(device) if task is Task.CTR else None
    worker = _Worker(
        cfg, task, rank, device, model, tokenizer, stepper, ds_cfg, yes_no, config.get("fault")
    )
    return worker, stopper, best


def _report_lines_follow(level: int) -> None:
    """Ray Train 2.60 logs each ``ray.train.report`` call ("Reporting training result N: …")
    through a logger named by its source file's path, so the run's
    ``LoggingConfig(log_level=…)`` misses it: give it the run's level."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its lines stay as Ray logs them
        return
    logging.getLogger(context.__file__).setLevel(level)


def epoch_bar(show: bool, *, total: int, done: int):
    """Rank 0's progress bar over epochs (Ray's ``tqdm_ray``: the driver draws it), or None when
    ``show`` is False (the driver's stderr is not a terminal)."""
    if not show:
        return None
    from ray.experimental import tqdm_ray

    bar = tqdm_ray.tqdm(total=total, desc="finetune", unit="epoch")
    if done:
        bar.update(done)  # resumed from a checkpoint
    return bar


def train_func(config: dict[str, Any]) -> None:
    """Per-worker training loop (``train_loop_config`` built by `goracs_ray.train.finetune`).

    Keys: ``cfg`` (TrainConfig), ``model`` (ModelConfig: LoRA settings or start adapter),
    ``task`` (Task value), ``model_path`` (str), ``use_gpu`` (bool), ``deepspeed`` (ZeRO stage,
    JSON path or None), ``fault`` (FaultInjection or None), ``gate`` (EpochGate or None),
    ``log_level`` (int: the level of Ray Train's lines, the driver's ``ray.train`` level),
    ``progress`` (bool: rank 0 shows a bar over epochs, :func:`epoch_bar`).
    """
    import ray.train

    _report_lines_follow(config.get("log_level", logging.INFO))
    torch.set_num_threads(config["cfg"].worker_threads)
    w, stopper, best = _start(config)
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    world_size = ray.train.get_context().get_world_size()
    gate: EpochGate | None = config.get("gate")
    show = config.get("progress", False) and w.rank == 0
    bar = epoch_bar(show, total=w.cfg.epochs, done=len(stopper.history))
    for epoch in range(len(stopper.history), w.cfg.epochs):
        if stopper.should_stop:
            break
        if gate is not None:
            gate.enter(rank=w.rank, epoch=epoch, world_size=world_size)
        train_loss, valid_loss = w.epoch(epoch, train_shard, valid_shard)
        if stopper.update(epoch, valid_loss):
            best = _lora_state(w.model)
        metrics = {
            "epoch": epoch,
            "workers": world_size,  # elastic runs: the world size this epoch trained with
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "best_valid_loss": stopper.best_loss,
            "best_epoch": stopper.best_epoch,
        }
        stopper.history.append(metrics)
        if w.rank == 0:
            logger.info(
                "epoch %d: train loss %.4f, valid loss %.4f (best %.4f at epoch %d)",
                epoch,
                train_loss,
                valid_loss,
                stopper.best_loss,
                stopper.best_epoch,
            )
        with tempfile.TemporaryDirectory() as tmp:
            _save_checkpoint(
                Path(tmp),
                rank=w.rank,
                peft_model=w.model,
                stepper=w.stepper,
                ds_cfg=w.ds_cfg,
                stopper=stopper,
                best=best,
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if bar is not None:
            bar.update(1)
        _maybe_pause(epoch)
    if bar is not None:
        bar.close()  # early stopping may end it short of `epochs`
