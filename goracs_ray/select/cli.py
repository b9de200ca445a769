"""`goracs select`: choose a coreset; write coreset.parquet and selection_trace.json."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from goracs_ray.io import check_output
from goracs_ray.select.config import SelectConfig, run_select
from goracs_ray.select.inputs import load_feature_table, load_split_features
from goracs_ray.select.output import checkpoint_dir_for, write_selection
from goracs_ray.select.refine import Estimator
from goracs_ray.select.registry import available_selectors
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["register", "select_command"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the `select` subcommand."""
    p = subparsers.add_parser(
        "select",
        help="choose a coreset (GORACS or a baseline)",
        description="Choose a coreset and write OUT/coreset.parquet and OUT/selection_trace.json.",
    )
    src = p.add_argument_group("inputs (either --features, or --train and --valid)")
    src.add_argument("--features", type=Path, help="features Parquet file or directory")
    src.add_argument(
        "--samples",
        type=Path,
        help="with --features: the samples dir of `goracs prepare` (users/items for stratified "
        "and DEALRec baselines; labels for --label-column label)",
    )
    src.add_argument("--train", type=Path, help="training embeddings (.npy or .parquet)")
    src.add_argument("--valid", type=Path, help="validation embeddings (.npy or .parquet)")
    src.add_argument("--grad-norms", type=Path, help="(N,) .npy gradient norms (for .npy input)")
    src.add_argument("--id-column", default="sample_id", help="id column (Parquet)")
    src.add_argument("--embedding-column", default="embedding", help="vector column (Parquet)")
    src.add_argument("--grad-column", default="grad_norm", help="gradient-norm column (Parquet)")
    src.add_argument("--label-column", help="class-label column: label-enhanced selection")
    d = SelectConfig()
    p.add_argument("--method", default=d.method, help=f"registered method (default {d.method})")
    p.add_argument("--budget", type=int, required=True, help="n, samples to select")
    p.add_argument("--lam", type=float, default=d.lam, help=f"λ ≥ 0 (default {d.lam})")
    p.add_argument(
        "--estimator", default=d.estimator.value, choices=[e.value for e in Estimator],
        help="swap estimator (default corrected)",
    )  # fmt: skip
    p.add_argument("--max-iters", type=int, default=d.max_iters, help="max accepted swaps")
    p.add_argument("--cut-num", type=int, default=d.cut_num, help="candidates per pruning side")
    p.add_argument(
        "--trim-inactive", action=argparse.BooleanOptionalAction, default=None,
        help="greedy active-support trim (default: on for faithful, off for corrected)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="swaps per round")
    p.add_argument("--time-limit", type=float, help="refinement time limit in seconds")
    p.add_argument("--distributed", action="store_true", help="run on Ray (same coreset)")
    p.add_argument("--workers", type=int, default=d.workers, help="OT evaluators (distributed)")
    p.add_argument("--shards", type=int, help="cost row shards (distributed; default --workers)")
    p.add_argument("--compress-valid", type=int, help="compress V to this many points (distr.)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (randomised methods)")
    p.add_argument(
        "--device", default=d.device,
        help="GORACS cost rows and screening: cpu (default), cuda, cuda:N or auto",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run)


def _load(args: argparse.Namespace) -> FeatureTable:
    if args.features is not None:
        if args.train is not None or args.valid is not None:
            raise ValueError("give either `--features` or `--train`/`--valid`, not both")
        return load_feature_table(
            args.features, label_column=args.label_column, samples_dir=args.samples
        )
    if args.train is None or args.valid is None:
        raise ValueError("give `--features PATH`, or both `--train PATH` and `--valid PATH`")
    return load_split_features(
        args.train, args.valid, grad_norms=args.grad_norms, id_column=args.id_column,
        embedding_column=args.embedding_column, grad_column=args.grad_column or None,
        label_column=args.label_column,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    cfg = SelectConfig(
        method=args.method, budget=args.budget, lam=args.lam, estimator=args.estimator,
        max_iters=args.max_iters, cut_num=args.cut_num, trim_inactive=args.trim_inactive,
        use_labels=True if args.label_column else None, batch_size=args.batch_size,
        time_limit=args.time_limit, seed=args.seed, device=args.device,
        distributed=args.distributed,
        workers=args.workers, shards=args.shards, compress_valid=args.compress_valid,
    )  # fmt: skip
    inputs = {k: getattr(args, k) for k in ("features", "samples", "train", "valid", "grad_norms")}
    check_output(args.out, inputs.values(), overwrite=args.overwrite)  # before reading inputs
    select_command(cfg, _load(args), args.out, overwrite=args.overwrite, inputs=inputs)
    return 0


def select_command(
    cfg: SelectConfig,
    features: FeatureTable,
    out: Path,
    *,
    overwrite: bool = False,
    inputs: dict[str, Any] | None = None,
) -> Selection:
    """Check the output location, run the selection, write it atomically; return it.

    GORACS methods checkpoint into :func:`checkpoint_dir_for` ``(out)`` and resume from it when
    rerun after a crash (same settings and inputs); it is removed once ``out`` is written.
    """
    if cfg.method not in available_selectors():
        raise ValueError(
            f"unknown `--method` {cfg.method!r}; choose one of {', '.join(available_selectors())}"
        )
    check_output(out, (inputs or {}).values(), overwrite=overwrite)
    t0 = time.perf_counter()
    ckpt = checkpoint_dir_for(out)
    selection = run_select(cfg, features, progress=sys.stderr.isatty(), checkpoint_dir=ckpt)
    seconds = time.perf_counter() - t0
    write_selection(
        out, selection, features, cfg, seconds=seconds, inputs=inputs or {}, overwrite=overwrite
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    logger.info(
        "selected %d of %d samples in %.1f s → %s", selection.size, features.n_train, seconds, out
    )
    return selection
