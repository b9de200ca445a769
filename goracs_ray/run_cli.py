"""`goracs run` (the whole pipeline) and `goracs config` (print the resolved/default YAML)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `run` and `config` subcommands."""
    run = subparsers.add_parser(
        "run",
        help="prepare → features → select → finetune → evaluate → report (cached per stage)",
        description="Run the full pipeline described by a run YAML; stages whose inputs and "
        "settings did not change are skipped. Replay: `goracs run <run_dir>/config.yaml`.",
    )
    run.add_argument("config", nargs="?", help="run YAML (default: built-in defaults)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set select.lam=0.5 (repeatable)",
    )
    run.add_argument("--force", action="store_true", help="re-run every stage, ignoring caches")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print each stage with its key and cached / would run, then exit (no Ray, no work)",
    )
    run.set_defaults(func=_run)

    show = subparsers.add_parser(
        "config", help="print the resolved run config as YAML (all options with their defaults)"
    )
    show.add_argument("config", nargs="?", help="run YAML (default: built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument(
        "--documented", action="store_true", help="each option's description as a comment"
    )
    show.set_defaults(func=_show)


def _run(args: argparse.Namespace) -> int:
    from goracs_ray.config import load_config
    from goracs_ray.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from goracs_ray.pipeline import plan_run, run_arms_of

        for rec in plan_run(cfg, run_arms_of(cfg), force=args.force):
            state = "cached" if rec.cached else "would run"
            print(f"stage {rec.name:<28} {rec.key}  {state}")
        return 0
    result = run_pipeline(cfg, force=args.force)
    for rec in result.stages:
        state = "cached" if rec.cached else f"{rec.seconds:7.1f} s"
        print(f"stage {rec.name:<28} {state}")
    for arm in result.arms:
        if len(arm.poo_trace):
            trace = " → ".join(f"{v:.4f}" for v in arm.poo_trace)
            print(f"{arm.method} POO (greedy, then each accepted exchange): {trace}")
    for arm in result.arms:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(arm.metrics.items()))
        print(f"{arm.method:>10}: {shown}")
    print(f"results: {result.results_md}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from goracs_ray.config import load_config
    from goracs_ray.configutil import documented_yaml, to_dict

    cfg = load_config(args.config, args.overrides)
    if args.documented:
        print(documented_yaml(cfg))
    else:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
