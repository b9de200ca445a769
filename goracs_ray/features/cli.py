"""`goracs features` and `goracs model tiny`: thin CLI wrappers over the library functions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _features(args: argparse.Namespace) -> int:
    from goracs_ray.config import read_section
    from goracs_ray.configutil import from_dict
    from goracs_ray.features.actors import compute_features
    from goracs_ray.features.config import FeaturesConfig
    from goracs_ray.raycluster import ensure_ray

    data = read_section(args.config, "features", args.set or [])
    cfg = from_dict(FeaturesConfig, data, where="features")
    ensure_ray(args.address)
    res = compute_features(cfg, args.samples, args.out, overwrite=args.overwrite, progress=True)
    print(
        f"features: {res.n_rows} samples in {res.n_shards} shards ({res.n_skipped} resumed) "
        f"in {res.seconds:.1f} s = {res.n_rows / res.seconds:.1f} samples/s → {res.out_dir}"
    )
    return 0


def _model_tiny(args: argparse.Namespace) -> int:
    from goracs_ray.models.tiny import build_catalog_model

    out = build_catalog_model(
        args.samples,
        args.out,
        seed=args.seed,
        pretrain_steps=args.pretrain_steps,
        overwrite=args.overwrite,
    )
    print(f"tiny model: {out} (corpus and pretraining record inside)")
    return 0


def register(subparsers) -> None:
    """Add `goracs features` and `goracs model tiny`."""
    p = subparsers.add_parser("features", help="per-sample embeddings, gradient norms, projections")
    p.add_argument("--samples", required=True, type=Path, help="samples dir (train/valid.parquet)")
    p.add_argument("--out", required=True, type=Path, help="features dir (resumable)")
    p.add_argument("--config", type=Path, help="YAML with a `features:` section (or its fields)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. proj_dim=512"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--overwrite", action="store_true", help="recompute from scratch")
    p.set_defaults(func=_features)

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
