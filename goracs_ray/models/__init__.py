"""goracs_ray.models: tiny LLaMA builder, LoRA loading, tokenisation and per-sample losses."""

from goracs_ray.models.lm import GradTarget, LoraSettings, load_causal_lm, target_parameter_names
from goracs_ray.models.text import LossOn, tokenize_samples
from goracs_ray.models.tiny import build_tiny_llm

__all__ = [
    "GradTarget",
    "LoraSettings",
    "LossOn",
    "build_tiny_llm",
    "load_causal_lm",
    "target_parameter_names",
    "tokenize_samples",
]
