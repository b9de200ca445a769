"""`goracs features`: a thin CLI wrapper over :func:`goracs_ray.features.compute_features`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from goracs_ray.data.schema import Task

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _features(args: argparse.Namespace) -> int:
    from goracs_ray.config import read_model, read_section, split_overrides
    from goracs_ray.configutil import from_dict
    from goracs_ray.features.actors import compute_features
    from goracs_ray.features.config import FeaturesConfig
    from goracs_ray.raycluster import ensure_ray

    stage_set, model_set = split_overrides(args.set or [])
    cfg = from_dict(
        FeaturesConfig, read_section(args.config, "features", stage_set), where="features"
    )
    model = read_model(args.config, model_set, model_path=args.model)
    ensure_ray(args.address)
    res = compute_features(
        cfg,
        args.samples,
        args.out,
        model=model,
        task=args.task,
        overwrite=args.overwrite,
        progress=True,
    )
    print(
        f"features: {res.n_rows} samples in {res.n_shards} shards ({res.n_skipped} resumed) "
        f"in {res.seconds:.1f} s = {res.n_rows / res.seconds:.1f} samples/s → {res.out_dir}"
    )
    return 0


def register(subparsers) -> None:
    """Add `goracs features`."""
    p = subparsers.add_parser("features", help="per-sample embeddings, gradient norms, projections")
    p.add_argument("--samples", required=True, type=Path, help="samples dir (train/valid.parquet)")
    p.add_argument("--out", required=True, type=Path, help="features dir (resumable)")
    p.add_argument(
        "--model",
        type=Path,
        help="base HF model: a dir or a Hub repo id (= model.path; default: the config's, "
        "else a tiny model built from the samples' catalog into OUT/tiny_model)",
    )
    p.add_argument(
        "--task", choices=[t.value for t in Task], help="default: the samples' `task` column"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="YAML: a run config (its `features:` and `model:` sections) or FeaturesConfig fields",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override, e.g. proj_dim=512 or model.lora.r=16",
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--overwrite", action="store_true", help="recompute from scratch")
    p.set_defaults(func=_features)
