"""DeepSpeed ZeRO configs: generated from `TrainConfig`, or a user's JSON completed from it.

Ray-free. The optimiser is always a torch AdamW passed to ``deepspeed.initialize`` (so DeepSpeed
never JIT-compiles its fused/CPU Adam), hence configs carry no ``optimizer``/``scheduler`` section.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["deepspeed_config"]

logger = logging.getLogger(__name__)

_AUTO = "auto"
_FORBIDDEN = ("optimizer", "scheduler")


def _generated(
    stage: int, *, micro_batch_size: int, grad_accum: int, grad_clip: float, bf16: bool
) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_scatter=True)
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _from_user_json(path: Path, *, micro_batch_size: int, grad_accum: int) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config `{path}` is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"DeepSpeed config `{path}` must hold a JSON object")
    bad = [k for k in _FORBIDDEN if k in cfg]
    if bad:
        raise ValueError(
            f"DeepSpeed config `{path}` has section(s) {', '.join(f'`{k}`' for k in bad)}; remove "
            "them: the optimiser is torch AdamW configured by `train.lr`/`train.weight_decay`"
        )
    for key, value in (
        ("train_micro_batch_size_per_gpu", micro_batch_size),
        ("gradient_accumulation_steps", grad_accum),
    ):
        if cfg.get(key, _AUTO) == _AUTO:
            cfg[key] = value
        elif cfg[key] != value:
            logger.warning(
                "DeepSpeed config %s sets %s=%s; it overrides the train config's %s",
                path,
                key,
                cfg[key],
                value,
            )
    if cfg.get("train_batch_size") == _AUTO:
        del cfg["train_batch_size"]  # derived by DeepSpeed from micro batch × accum × world size
    return cfg


def deepspeed_config(
    setting: int | Path | None,
    *,
    micro_batch_size: int,
    grad_accum: int,
    grad_clip: float = 1.0,
    bf16: bool = False,
) -> dict[str, Any] | None:
    """The DeepSpeed config dict for a resolved ``TrainConfig.deepspeed_setting``.

    Parameters
    ----------
    setting : int | Path | None
        ZeRO stage 0–3 (config generated), a user JSON file (completed: ``"auto"`` or missing
        batch sizes are filled in), or None (no DeepSpeed: returns None).
    micro_batch_size, grad_accum : int
        Per-worker micro batch and accumulation steps. ``train_batch_size`` is left out so
        DeepSpeed derives it from the actual (possibly elastic) world size.
    grad_clip : float
        Gradient clipping (generated configs only).
    bf16 : bool
        bf16 mixed precision (generated configs only; GPU workers with bf16 support).
    """
    if setting is None:
        return None
    if isinstance(setting, Path):
        return _from_user_json(setting, micro_batch_size=micro_batch_size, grad_accum=grad_accum)
    if not 0 <= setting <= 3:
        raise ValueError(f"`deepspeed` stage must be 0–3, got {setting}")
    return _generated(
        setting,
        micro_batch_size=micro_batch_size,
        grad_accum=grad_accum,
        grad_clip=grad_clip,
        bf16=bf16,
    )
