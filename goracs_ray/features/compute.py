"""Ray-free feature computation: one model per process, rows in → FEATURE_COLUMNS table out.

:class:`FeatureComputer` is what each Ray actor holds (``features/actors.py``); it is equally usable
in a plain process. Rows are sorted by length and packed into batches of at most ``batch_tokens``
padded tokens, then restored to input order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from goracs_ray.data.schema import FEATURE_COLUMNS, Task
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.features.embed import (
    EmbeddingKind,
    SentenceEncoder,
    embedding_texts,
    pool_hidden,
    token_mask,
)
from goracs_ray.features.grads import CheckedGrads
from goracs_ray.features.projection import GradProjector
from goracs_ray.models.config import LoraSettings, ModelConfig
from goracs_ray.models.lm import GradTarget, load_causal_lm, set_trainable, target_parameter_names
from goracs_ray.models.losses import causal_lm_loss, ctr_token_ids
from goracs_ray.models.text import pack_token_ids, tokenize_samples
from goracs_ray.raycluster import free_port

__all__ = [
    "SECONDS_METADATA_KEY",
    "FeatureComputer",
    "ZeroGroup",
    "keep_freed_memory",
    "token_batches",
    "warmup_adapter",
]

#: Parquet schema-metadata key of a features shard: JSON {part: seconds} of its computation
#: (``gradients`` incl. the forward, ``projection``, ``embedding``), summed in the manifest.
SECONDS_METADATA_KEY = b"goracs_seconds"

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def token_batches(lengths: Sequence[int], batch_tokens: int) -> list[np.ndarray]:
    """Group row indices by length so each batch has ``B × max_len ≤ batch_tokens``.

    Parameters
    ----------
    lengths : (N,) int
        Tokens per row (after truncation).
    batch_tokens : int
        Padded-token budget per batch (a row longer than the budget gets its own batch).

    Returns
    -------
    list of (B_j,) int64
        Index arrays covering ``range(N)`` exactly once, longest rows first.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, current, width = [], [], 0
    for i in order:
        w = max(width, int(lengths[i]))
        if current and w * (len(current) + 1) > batch_tokens:
            batches.append(np.asarray(current, dtype=np.int64))
            current, w = [], int(lengths[i])
        current.append(int(i))
        width = w
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS.

    glibc serves large allocations (every activation tensor of a batch) with fresh ``mmap``
    pages and unmaps them on free, so each batch page-faults its working set anew: ~5,000 minor
    faults per 64-sample batch of the tiny model, element-wise ops 3-4x slower than on reused
    memory (measured, ``benchmarks/bench_grads.py``). Raising glibc's mmap and trim thresholds
    (``mallopt``) keeps freed blocks in the heap for the next batch, as a caching allocator
    (jemalloc, tcmalloc) would. Process-wide; a no-op returning False off glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


@dataclasses.dataclass(frozen=True)
class ZeroGroup:
    """This process's place in a features group that partitions one model with ZeRO-3.

    Attributes
    ----------
    rank, world_size : int
        This process's rank and the group size k (``features.model_shards``).
    master_addr : str
        Host of rank 0 (its Ray node IP), where the group meets.
    master_port : int
        Free port on that host.
    ds_config : dict
        DeepSpeed config (:meth:`goracs_ray.models.config.ModelConfig.features_zero3_config`).
    """

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    ds_config: dict


def _join_group(group: ZeroGroup):
    """Start torch.distributed for ``group`` (gloo on CPU, NCCL on GPU) through DeepSpeed and
    return the device this rank computes on (Ray gives each GPU actor its own one GPU)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    os.environ.update(
        RANK=str(group.rank),
        WORLD_SIZE=str(group.world_size),
        LOCAL_RANK="0",
        MASTER_ADDR=group.master_addr,
        MASTER_PORT=str(group.master_port),
    )
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl")
    return torch.device(get_accelerator().current_device_name())


def _deepspeed_module(model, stage: int):
    """Wrap ``model`` in a DeepSpeed engine (single process; gloo on CPU) and return its module."""
    import deepspeed

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl")
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine.module


class FeatureComputer:
    """Holds the model (and encoder, projector) once; computes features for lists of samples.

    Parameters
    ----------
    cfg : FeaturesConfig
    model : ModelConfig
        LoRA settings of a fresh adapter, dtype, device and DeepSpeed choice.
    task : Task
        The loss: SeqRec token mean or CTR Yes/No.
    model_path : path
        The resolved HF model dir (``model.path`` or the built tiny model).
    adapter_path : path, optional
        Adapter to load (``model.adapter_path`` or the warm-up adapter); else a fresh
        ``model.lora``.
    group : ZeroGroup, optional
        Join a group of k processes that hold the model partitioned with ZeRO-3: the weights are
        partitioned as they load (``transformers``' DeepSpeed integration, ``zero.Init``), so no
        process ever holds the whole model. Every rank of the group must then call
        :meth:`compute` the same number of times (with no rows where it has none): each
        layer's forward and backward gathers its weights from all ranks.
    """

    def __init__(
        self,
        cfg: FeaturesConfig,
        model: ModelConfig,
        task: Task,
        model_path: Path,
        adapter_path: Path | None,
        group: ZeroGroup | None = None,
    ) -> None:
        torch.set_num_threads(cfg.torch_threads)
        keep_freed_memory()
        self.cfg, self.task, self.group = cfg, Task(task), group
        device = None
        if group is not None:
            from transformers.integrations import HfDeepSpeedConfig

            device = _join_group(group)
            # Kept alive: while it exists, from_pretrained loads under ZeRO-3 (partitioned).
            self._hf_deepspeed = HfDeepSpeedConfig(group.ds_config)
        lm, self.tokenizer = load_causal_lm(
            model_path,
            lora=model.lora,
            adapter_path=adapter_path,
            dtype=_DTYPES[model.dtype],
            attn_implementation=cfg.attn_implementation,
            trainable=cfg.grad_target,
        )
        if group is not None:
            import deepspeed

            # No optimizer: DeepSpeed's ZeRO-3 inference engine; its hooks gather each
            # module's weights for the forward and again for autograd's backward.
            lm = deepspeed.initialize(model=lm, config=group.ds_config)[0].module
        elif model.features_zero_stage is not None:
            lm = _deepspeed_module(lm, model.features_zero_stage)
        elif torch.cuda.is_available() and model.wants_gpu(True):
            lm = lm.to("cuda")  # Ray gave this actor a GPU (CUDA_VISIBLE_DEVICES)
        self.model = lm
        self.device = device or next(lm.parameters()).device
        self.names = target_parameter_names(lm, cfg.grad_target)
        self.grads = CheckedGrads(cfg.grad_method)  # the fused forward verified on batch 1
        named = dict(lm.named_parameters())
        self.grad_dim = sum(_full_numel(named[n]) for n in self.names)
        if adapter_path is None and cfg.grad_target is GradTarget.ALL_LORA:
            logger.warning(
                "fresh adapter (lora_B = 0): every lora_A gradient is 0; set "
                "`features.warmup_steps` or `model.adapter_path` for meaningful all-LoRA gradients"
            )
        self.token_ids = ctr_token_ids(self.tokenizer) if self.task is Task.CTR else None
        self.projector = None
        if cfg.proj_dim:
            self.projector = GradProjector(
                self.grad_dim, cfg.proj_dim, seed=cfg.proj_seed, kind=cfg.proj_kind
            )
        self.seconds = {"gradients": 0.0, "projection": 0.0, "embedding": 0.0}
        """Seconds spent per part by the current :meth:`compute` call."""
        self.encoder = None
        if cfg.embedding is EmbeddingKind.SENTENCE:
            self.encoder = SentenceEncoder(cfg.encoder_path)

    def param_bytes(self) -> dict[str, int]:
        """Bytes of model weights this process holds (``held``) and of the whole model
        (``whole``). Under ZeRO-3 a process holds its partition of every parameter, plus the
        parameters DeepSpeed keeps whole (below ``stage3_param_persistence_threshold``)."""
        held = whole = 0
        for p in self.model.parameters():
            size = p.element_size()
            whole += _full_numel(p) * size
            held += (p.data.numel() + getattr(p, "ds_tensor", p.data[:0]).numel()) * size
        return {"held": held, "whole": whole}

    def _batch(self, prompts, outputs, p_ids, o_ids) -> dict[str, np.ndarray]:
        cfg, tok = self.cfg, self.tokenizer
        device = self.device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        batch = pack_token_ids(
            p_ids,
            o_ids,
            max_length=cfg.max_length,
            loss_on=cfg.loss_on,
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
            pad_id=pad,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        t0 = time.perf_counter()
        res = self.grads(
            self.model,
            batch,
            self.names,
            task=cfg.loss_task(self.task),
            token_ids=self.token_ids,
            with_hidden=self.encoder is None,
        )
        out = {"grad_norm": res.norms.cpu().numpy(), "loss": res.losses.cpu().numpy()}
        t1 = time.perf_counter()
        self.seconds["gradients"] += t1 - t0
        if self.projector is not None:
            out["grad_proj"] = self.projector(res.grads).cpu().numpy()
            self.seconds["projection"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        if self.encoder is not None:
            texts = embedding_texts(prompts, outputs, self.task)
            out["embedding"] = self.encoder.encode(texts).numpy()
        else:
            hidden = res.hidden
            if hidden is None:
                with torch.no_grad():
                    base = self.model.get_base_model()
                    hidden = base.get_decoder()(input_ids=batch["input_ids"])[0]
            # the answer as pack_token_ids lays it out: output + EOS, capped with room for BOS
            cap = cfg.max_length - (tok.bos_token_id is not None) - 1
            ends = [min(len(o) + (tok.eos_token_id is not None), cap) for o in o_ids]
            mask = token_mask(batch, self.task, answer_lengths=torch.tensor(ends, device=device))
            emb = pool_hidden(hidden, mask, cfg.embedding)
            out["embedding"] = emb.cpu().numpy()
        self.seconds["embedding"] += time.perf_counter() - t2
        return out

    def compute(
        self,
        sample_ids: Sequence[str],
        splits: Sequence[str],
        prompts: Sequence[str],
        outputs: Sequence[str],
    ) -> pa.Table:
        """Features of N samples, in input order.

        Returns
        -------
        pa.Table
            FEATURE_COLUMNS: sample_id, split, embedding (d,), grad_norm, grad_proj (k,) when
            ``proj_dim > 0``, loss. Memory: N × (d + k) float32. Its schema metadata holds the
            seconds per part (:data:`SECONDS_METADATA_KEY`; also in :attr:`seconds`).
        """
        n = len(sample_ids)
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        parts: dict[str, np.ndarray] = {}
        p_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if n else []
        o_ids = self.tokenizer(list(outputs), add_special_tokens=False)["input_ids"] if n else []
        lengths = [min(len(p) + len(o) + 2, self.cfg.max_length) for p, o in zip(p_ids, o_ids)]
        batches = token_batches(lengths, self.cfg.batch_tokens)
        idle = self._group_idle_batches(len(batches)) if self.group is not None else 0
        for idx in batches:
            res = self._batch(
                [prompts[i] for i in idx],
                [outputs[i] for i in idx],
                [p_ids[i] for i in idx],
                [o_ids[i] for i in idx],
            )
            for key, value in res.items():
                if key not in parts:
                    parts[key] = np.zeros((n, *value.shape[1:]), dtype=np.float32)
                parts[key][idx] = value
        self._idle(idle)
        if not n:
            return pa.table({"sample_id": pa.array([], pa.string())})
        cols = {"sample_id": pa.array(list(sample_ids), pa.string())}
        cols["split"] = pa.array(list(splits), pa.string())
        for key in ("embedding", "grad_norm", "grad_proj", "loss"):
            if key not in parts:
                continue
            value = parts[key]
            if value.ndim == 2:
                flat = pa.array(value.reshape(-1), pa.float32())
                cols[key] = pa.FixedSizeListArray.from_arrays(flat, value.shape[1]).cast(
                    FEATURE_COLUMNS[key]
                )
            else:
                cols[key] = pa.array(value, FEATURE_COLUMNS[key])
        return pa.table(cols, metadata={SECONDS_METADATA_KEY: json.dumps(self.seconds).encode()})

    def _group_idle_batches(self, n_batches: int) -> int:
        """How many batches fewer than the group's busiest rank this rank has (a collective:
        every rank calls it before its first batch). ZeRO-3 gathers each layer's weights from
        all ranks, so every rank must run the same number of forwards and backwards."""
        import torch.distributed as dist

        most = torch.tensor([n_batches], device=self.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item()) - n_batches

    def _idle(self, n_batches: int) -> None:
        """Run ``n_batches`` throw-away one-sample batches through the same code path as real
        ones (hence ``_batch``), so the group's collectives stay paired."""
        ids = self.tokenizer(".", add_special_tokens=False)["input_ids"]
        for _ in range(n_batches):
            self._batch(["."], ["."], [ids], [ids])


def _full_numel(p: torch.Tensor) -> int:
    """Elements of parameter ``p`` in the whole model (ZeRO-3 leaves an empty ``p.data``)."""
    return int(getattr(p, "ds_numel", p.numel()))


def warmup_adapter(
    cfg: FeaturesConfig,
    lora: LoraSettings,
    model_path: Path,
    prompts: Sequence[str],
    outputs: Sequence[str],
    out_dir: Path,
    *,
    seed: int = 0,
) -> Path:
    """Train a fresh ``lora`` adapter for ``cfg.warmup_steps`` AdamW steps and save it.

    A fresh adapter has lora_B = 0, so every lora_A gradient is exactly 0; a short warm-up on the
    training pool (batches of 8 random samples, seeded) makes all LoRA gradients informative.
    Deterministic for a given ``seed``; done once, then every actor loads ``out_dir``.
    """
    from goracs_ray.io import atomic_dir

    torch.manual_seed(seed)
    model, tok = load_causal_lm(model_path, lora=lora, trainable=GradTarget.ALL_LORA)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.warmup_lr)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(cfg.warmup_steps):
        idx = rng.choice(len(prompts), size=min(8, len(prompts)), replace=False)
        batch = tokenize_samples(
            tok,
            [prompts[i] for i in idx],
            [outputs[i] for i in idx],
            max_length=cfg.max_length,
            loss_on=cfg.loss_on,
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = causal_lm_loss(logits, batch["labels"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    set_trainable(model, None)
    with atomic_dir(out_dir, overwrite=True) as part:
        model.save_pretrained(part)
    logger.info("warm-up: %d steps, last loss %.3f → %s", cfg.warmup_steps, loss.item(), out_dir)
    return out_dir
