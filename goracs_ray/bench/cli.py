"""`goracs bench`: run a benchmark YAML (methods × budgets × seeds) and print its results."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `bench` subcommand."""
    bench = subparsers.add_parser(
        "bench",
        help="every selection method × budget × seed: select → fine-tune → evaluate → results.md",
        description="Benchmark selection methods on the same features, fine-tuning and "
        "evaluation. Writes results.parquet, results.md (mean ± std, best in bold) and plots "
        "into the config's run_dir; every stage is cached, so a re-run only adds new arms.",
    )
    bench.add_argument("config", help="bench YAML (a run YAML with a `bench:` section)")
    bench.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set bench.seeds=[0,1] (repeatable)",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="apply the config's `bench.quick` overrides (CI-sized smoke run, <run_dir>-quick)",
    )
    bench.add_argument("--force", action="store_true", help="re-run every stage, ignoring caches")
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from goracs_ray.bench import load_bench_config, run_bench

    cfg = load_bench_config(args.config, args.overrides, quick=args.quick)
    if cfg.bench.parallel_arms > 1:
        import torch

        # Arms select and evaluate in threads of this process, next to the training workers:
        # one intra-op thread each, or torch's threads spin against each other on a busy
        # machine (likelihood scoring under load: 0.54 against 0.74 s a sample, measured).
        torch.set_num_threads(1)
    result = run_bench(cfg, force=args.force)
    print(result.results_md.read_text())
    print(f"results: {result.results_md} ({result.seconds / 60:.1f} min)")
    return 0
