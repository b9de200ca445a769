"""Configuration of the features stage (`goracs features`, ``features:`` in the run YAML)."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from goracs_ray.data.schema import Task
from goracs_ray.features.embed import EmbeddingKind
from goracs_ray.features.grads import GradMethod
from goracs_ray.features.projection import ProjectionKind
from goracs_ray.models.lm import GradTarget, LoraSettings
from goracs_ray.models.text import LossOn

__all__ = ["DEFAULT_TINY", "Engine", "FeaturesConfig", "TinyModelConfig"]


class Engine(str, enum.Enum):
    """What runs the model inside each actor."""

    TORCH = "torch"
    DEEPSPEED = "deepspeed"


@dataclasses.dataclass(frozen=True)
class TinyModelConfig:
    """Size of the tiny LLaMA built when no ``model_path`` is given."""

    vocab_size: int = 1024
    """BPE vocabulary size."""
    hidden_size: int = 64
    """Hidden size."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 128
    """MLP size."""
    max_position_embeddings: int = 512
    """Longest sequence."""
    pretrain_steps: int = 0
    """At most this many next-token steps on the catalog text (item titles, years, genres;
    never the samples), fewer once the corpus loss stops improving (0: random init)."""
    pretrain_patience: int = 3
    """Corpus-loss checks (every 50 steps) without a 0.5 % gain before pretraining stops."""


DEFAULT_TINY = TinyModelConfig()
"""The default CPU model (≈ 0.2 M parameters): the full ml-100k pool fits in < 10 min on 2 cores."""


@dataclasses.dataclass
class FeaturesConfig:
    """Per-sample features: embeddings, LoRA gradient norms and projections."""

    model_path: Path | None = None
    """HF causal-LM dir. None: build the default tiny model into ``<out_dir>/tiny_model``."""
    tiny: TinyModelConfig = dataclasses.field(default_factory=TinyModelConfig)
    """Tiny model sizes, used only when ``model_path`` is None."""
    adapter_path: Path | None = None
    """Warm-start peft adapter dir (as the reference: an instruction-tuned adapter)."""
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    """Fresh adapter settings when no ``adapter_path`` is given."""
    warmup_steps: int = 0
    """AdamW steps on the train split to warm up a fresh adapter (lora_B = 0 makes every lora_A
    gradient 0); done once on the driver, saved, then loaded by every actor."""
    warmup_lr: float = 1e-3
    """Learning rate of the warm-up."""
    task: Task = Task.SEQREC
    """Loss: ``seqrec`` (token mean) or ``ctr`` (Yes/No 2-way)."""
    splits: tuple[str, ...] = ("train", "valid")
    """Sample splits to featurise (METHOD.md §6: train and valid)."""
    grad_target: GradTarget = GradTarget.LAST_V_LORA_B
    """Parameters whose per-sample gradient is measured."""
    grad_method: GradMethod = GradMethod.HOOKS
    """``hooks`` (LLaMA fast forward, else HF), ``hooks_hf``, ``vmap`` or ``loop`` (slow)."""
    loss_on: LossOn = LossOn.RESPONSE
    """Tokens in the SeqRec loss: the answer (default) or ``all``."""
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
    actor_cpus: float = 1.0
    """Logical CPUs per actor (fractional is fine; 0.5–1 on small machines)."""
    actor_gpus: float = 0.0
    """GPUs per actor."""
    torch_threads: int = 1
    """torch intra-op threads per actor."""
    engine: Engine = Engine.TORCH
    """``torch`` or ``deepspeed`` (ZeRO ``deepspeed_stage``; CPU via gloo)."""
    deepspeed_stage: int = 0
    """ZeRO stage for the DeepSpeed engine (0 or 3)."""
    dtype: str = "float32"
    """Model weights dtype: float32, bfloat16 or float16."""
    attn_implementation: str = "sdpa"
    """HF attention kernel: ``sdpa`` (fast; hooks/loop) or ``eager`` (needed by ``vmap``)."""

    def __post_init__(self) -> None:
        self._coerce_enums()
        for name in ("max_length", "batch_tokens", "rows_per_shard", "min_actors", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}")
        if self.max_actors < self.min_actors:
            raise ValueError(f"`max_actors` ({self.max_actors}) must be ≥ `min_actors`")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"`batch_tokens` must be ≥ `max_length` ({self.max_length})")
        if self.proj_dim < 0 or self.warmup_steps < 0:
            raise ValueError("`proj_dim` and `warmup_steps` must be ≥ 0")
        if self.actor_cpus <= 0:
            raise ValueError(f"`actor_cpus` must be > 0, got {self.actor_cpus}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"`dtype` must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.deepspeed_stage not in (0, 1, 2, 3):
            raise ValueError(f"`deepspeed_stage` must be 0–3, got {self.deepspeed_stage}")
        if self.grad_method is GradMethod.VMAP and self.attn_implementation != "eager":
            raise ValueError("`grad_method: vmap` needs `attn_implementation: eager`")
        if not self.splits:
            raise ValueError("`splits` is empty; e.g. [train, valid]")

    def _coerce_enums(self) -> None:
        """Accept plain strings for the enum fields (as YAML gives), naming a bad one."""
        for name, enum_cls in (
            ("task", Task),
            ("grad_target", GradTarget),
            ("grad_method", GradMethod),
            ("loss_on", LossOn),
            ("embedding", EmbeddingKind),
            ("proj_kind", ProjectionKind),
            ("engine", Engine),
        ):
            value = getattr(self, name)
            try:
                setattr(self, name, enum_cls(value))
            except ValueError:
                choices = ", ".join(m.value for m in enum_cls)
                raise ValueError(f"`{name}`: {value!r} is not one of {choices}") from None
