"""Load any HF causal LM (tiny or 7B) with an optional peft LoRA adapter, new or from disk."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from goracs_ray.models.config import GradTarget, LoraSettings

__all__ = [
    "GradTarget",
    "LoraSettings",
    "load_causal_lm",
    "set_trainable",
    "sliding_window",
    "target_parameter_names",
    "zero3_partitioned",
]

logger = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"layers\.(\d+)\.")


def target_parameter_names(model: torch.nn.Module, target: GradTarget | str) -> list[str]:
    """Names of the LoRA parameters selected by ``target`` (in ``named_parameters`` order).

    Raises
    ------
    ValueError
        If the model has no matching LoRA parameter (no adapter, or no v_proj adapter).
    """
    target = GradTarget(target)
    lora = [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    if target is GradTarget.ALL_LORA:
        names = lora
    else:
        v_b = [n for n in lora if ".v_proj.lora_B." in n and _LAYER_RE.search(n)]
        last = max((int(_LAYER_RE.search(n).group(1)) for n in v_b), default=None)
        names = [n for n in v_b if int(_LAYER_RE.search(n).group(1)) == last]
    if not names:
        raise ValueError(
            f"gradient target `{target.value}` matches no parameter: the model needs a LoRA "
            "adapter (pass `lora=LoraSettings()` or `adapter_path`) with v_proj in `target_modules`"
        )
    return names


def set_trainable(model: torch.nn.Module, target: GradTarget | str | None) -> list[str]:
    """Freeze everything except ``target``'s parameters (None: freeze all); returns their names."""
    names = set(target_parameter_names(model, target)) if target is not None else set()
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Hide peft's call of transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning
    per model load that the user can do nothing about); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def load_causal_lm(
    model_path: str | os.PathLike[str],
    *,
    lora: LoraSettings | None = None,
    adapter_path: str | os.PathLike[str] | None = None,
    attn_implementation: str = "eager",
    dtype: torch.dtype = torch.float32,
    trainable: GradTarget | str | None = GradTarget.ALL_LORA,
    seed: int = 0,
):
    """Load ``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local dir, optionally with LoRA.

    Parameters
    ----------
    model_path : path
        HF model directory (a tiny model from :func:`goracs_ray.models.tiny.build_tiny_llm`, or a
        real checkpoint).
    lora : LoraSettings, optional
        Add a fresh adapter (lora_B = 0). Ignored when ``adapter_path`` is given.
    adapter_path : path, optional
        A saved peft adapter dir to load (warm start), trainable.
    attn_implementation : str
        ``"eager"`` (default; works under torch.func and DeepSpeed on CPU) or ``"sdpa"``.
    dtype : torch.dtype
        Weight dtype (float32 on CPU; bf16/fp16 on GPU).
    trainable : GradTarget, str or None
        Parameters left with ``requires_grad`` (default all LoRA); None freezes all. Without an
        adapter everything stays as loaded.
    seed : int
        Seeds a fresh adapter's lora_A init (global RNG untouched), so every process that loads
        the same model with the same seed gets the same adapter.

    Returns
    -------
    (model, tokenizer)
        The model in eval mode (peft ``PeftModel`` when an adapter is used) and a right-padding
        tokenizer with a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"`model_path` {path} is not a HF model dir (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        logger.warning("tokenizer of %s has no pad token; padding with eos", path)
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_path is not None:
        from peft import PeftModel

        if not (Path(adapter_path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"`adapter_path` {adapter_path} has no adapter_config.json")
        with _quiet_peft():
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    elif lora is not None:
        from peft import get_peft_model

        with torch.random.fork_rng(devices=[]), _quiet_peft():
            torch.manual_seed(seed)
            model = get_peft_model(model, lora.to_peft())
    if adapter_path is not None or lora is not None:
        set_trainable(model, trainable)
    model.eval()
    return model, tokenizer


def sliding_window(config) -> int | None:
    """The attention window of a model whose layers use sliding-window attention (None: every
    layer attends to the whole causal past), read from its HF config (Mistral's
    ``sliding_window``; Qwen2/3's ``use_sliding_window`` and ``layer_types``)."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def zero3_partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``model``'s parameters (each carries a ``ds_id``)."""
    return hasattr(next(model.parameters()), "ds_id")
