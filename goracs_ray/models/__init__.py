"""goracs_ray.models: the model config, tiny LLaMA builder, LoRA loading, tokenisation, losses.

Names are imported lazily, so ``goracs_ray.models.config`` (read by every config loader) does not
pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GradTarget": "goracs_ray.models.config",
    "LoraSettings": "goracs_ray.models.config",
    "ModelConfig": "goracs_ray.models.config",
    "TinyModelConfig": "goracs_ray.models.config",
    "LossOn": "goracs_ray.models.text",
    "tokenize_samples": "goracs_ray.models.text",
    "build_tiny_llm": "goracs_ray.models.tiny",
    "load_causal_lm": "goracs_ray.models.lm",
    "target_parameter_names": "goracs_ray.models.lm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'goracs_ray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
