"""`goracs model tiny`: build the tiny stand-in LLM from a prepared catalog."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

__all__ = ["register"]


def _model_tiny(args: argparse.Namespace) -> int:
    from goracs_ray.models.config import ModelConfig, TinyModelConfig
    from goracs_ray.models.tiny import build_model

    tiny = dataclasses.replace(TinyModelConfig(), pretrain_steps=args.pretrain_steps)
    out = build_model(
        ModelConfig(tiny=tiny, seed=args.seed), args.samples, args.out, overwrite=args.overwrite
    )
    print(f"tiny model: {out} (corpus and pretraining record inside)")
    return 0


def register(subparsers) -> None:
    """Add `goracs model tiny`."""
    m = subparsers.add_parser("model", help="model utilities")
    msub = m.add_subparsers(dest="model_command", required=True)
    t = msub.add_parser(
        "tiny", help="build a tiny LLaMA + BPE tokenizer pretrained on a prepared catalog"
    )
    t.add_argument(
        "--samples",
        "--texts-from",
        required=True,
        type=Path,
        help="prepared samples dir (its items.parquet is the pretraining corpus)",
    )
    t.add_argument("--out", required=True, type=Path, help="output HF model dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--pretrain-steps", type=int, default=3000, help="max steps (stops at a loss plateau)"
    )
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_model_tiny)
