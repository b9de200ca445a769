"""Configuration of the features stage (`goracs features`, ``features:`` in the run YAML)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from goracs_ray.data.schema import Task
from goracs_ray.features.embed import EmbeddingKind
from goracs_ray.features.grads import GradMethod
from goracs_ray.features.projection import ProjectionKind
from goracs_ray.models.config import GradTarget
from goracs_ray.models.text import LossOn

__all__ = ["FeaturesConfig"]


@dataclasses.dataclass
class FeaturesConfig:
    """Per-sample features: embeddings, LoRA gradient norms and projections.

    The model, its adapter, dtype, device and DeepSpeed choice come from the ``model:`` section
    (:class:`~goracs_ray.models.config.ModelConfig`), the task from the samples.
    """

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "model_path": "model.path",
        "tiny": "model.tiny",
        "adapter_path": "model.adapter_path",
        "lora": "model.lora",
        "dtype": "model.dtype",
        "engine": "model.deepspeed",
        "deepspeed_stage": "model.deepspeed",
        "task": "data.task",  # `goracs features`: the samples' task, or --task
    }

    warmup_steps: int = 0
    """AdamW steps on the train split to warm up a fresh ``model.lora`` adapter (lora_B = 0
    makes every lora_A gradient 0); done once on the driver, saved, then loaded by every actor."""
    warmup_lr: float = 1e-3
    """Learning rate of the warm-up."""
    splits: tuple[str, ...] = ("train", "valid")
    """Sample splits to featurise (METHOD.md §6: train and valid)."""
    grad_target: GradTarget = GradTarget.LAST_V_LORA_B
    """Parameters whose per-sample gradient is measured."""
    grad_method: GradMethod = GradMethod.HOOKS
    """``hooks`` (stock HF forward, prompt prefix shared through the KV cache), ``fused`` (opt-in
    LLaMA-layout forward, ≈ 2× faster, verified on the first batch), ``hooks_hf``, ``vmap`` or
    ``loop`` (slow)."""
    loss_on: LossOn = LossOn.RESPONSE
    """Tokens in the loss the gradients are of: the answer (default; for CTR the 2-way Yes/No
    loss) or ``all``: the causal-LM loss averaged over every token of the sample, prompt and
    answer, as the reference computes it for both tasks (METHOD.md §6)."""
    max_length: int = 256
    """Tokens per sample; longer prompts lose their oldest tokens."""
    embedding: EmbeddingKind = EmbeddingKind.LLM_MEAN
    """``llm_mean`` / ``llm_last`` (free, same forward) or ``sentence`` (a sentence encoder)."""
    encoder_path: Path | None = None
    """Sentence encoder dir; None: the bundled all-MiniLM-L6-v2."""
    proj_dim: int = 0
    """k of the gradient JL projection (0: no ``grad_proj`` column)."""
    proj_kind: ProjectionKind = ProjectionKind.RADEMACHER
    """JL matrix entries."""
    proj_seed: int = 0
    """Projection seed (same seed → same projection everywhere)."""
    batch_tokens: int = 16384
    """Token budget of one model batch (padded B × T) inside an actor."""
    rows_per_shard: int = 2048
    """Samples per output shard (the unit of resume and retry)."""
    min_actors: int = 1
    """Actor pool lower bound."""
    max_actors: int = 2
    """Actor pool upper bound."""
    model_shards: int = 1
    """Actors that share one model, partitioned with DeepSpeed ZeRO-3 (each holds about 1/k of
    the weights; gloo on CPU, NCCL on GPU): for a model that does not fit one worker. The k
    actors of a group featurise k shards at a time in lockstep; ``max_actors // k`` groups (at
    least one). 1: every actor holds the whole model. Needs ``model.deepspeed`` ``auto``, ``3``
    or a stage-3 JSON (docs/features.md)."""
    actor_cpus: float = 1.0
    """Logical CPUs per actor (fractional is fine; 0.5–1 on small machines)."""
    actor_gpus: float | None = None
    """GPUs per actor (a fraction shares one); None: 1 where ``model.device`` gives one, else 0."""
    torch_threads: int = 1
    """torch intra-op threads per actor."""
    attn_implementation: str = "sdpa"
    """HF attention kernel: ``sdpa`` (fast; hooks/loop) or ``eager`` (needed by ``vmap``)."""

    def __post_init__(self) -> None:
        self._coerce_enums()
        for name in (
            "max_length",
            "batch_tokens",
            "rows_per_shard",
            "min_actors",
            "torch_threads",
            "model_shards",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}")
        if self.max_actors < self.min_actors:
            raise ValueError(f"`max_actors` ({self.max_actors}) must be ≥ `min_actors`")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"`batch_tokens` must be ≥ `max_length` ({self.max_length})")
        if self.proj_dim < 0 or self.warmup_steps < 0:
            raise ValueError("`proj_dim` and `warmup_steps` must be ≥ 0")
        if self.actor_gpus is not None and self.actor_gpus < 0:
            raise ValueError(f"`actor_gpus` must be ≥ 0 or null, got {self.actor_gpus}")
        if self.actor_cpus <= 0:
            raise ValueError(f"`actor_cpus` must be > 0, got {self.actor_cpus}")
        if self.grad_method is GradMethod.VMAP and self.attn_implementation != "eager":
            raise ValueError("`grad_method: vmap` needs `attn_implementation: eager`")
        if not self.splits:
            raise ValueError("`splits` is empty; e.g. [train, valid]")

    def loss_task(self, task: Task | str) -> Task:
        """The loss of the gradients and per-sample losses, as the ``task`` argument of
        :func:`~goracs_ray.features.grads.per_sample_grads`: ``task`` itself, except CTR with
        ``loss_on: all``, whose loss is the causal-LM loss over the whole sample (the SeqRec
        loss on labels that cover every token) rather than the 2-way Yes/No answer loss."""
        task = Task(task)
        if task is Task.CTR and self.loss_on is LossOn.ALL:
            return Task.SEQREC
        return task

    def _coerce_enums(self) -> None:
        """Accept plain strings for the enum fields (as YAML gives), naming a bad one."""
        for name, enum_cls in (
            ("grad_target", GradTarget),
            ("grad_method", GradMethod),
            ("loss_on", LossOn),
            ("embedding", EmbeddingKind),
            ("proj_kind", ProjectionKind),
        ):
            value = getattr(self, name)
            try:
                setattr(self, name, enum_cls(value))
            except ValueError:
                choices = ", ".join(m.value for m in enum_cls)
                raise ValueError(f"`{name}`: {value!r} is not one of {choices}") from None
