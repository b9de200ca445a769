"""`goracs data fetch ml-100k` and `goracs prepare`: thin wrappers over the library."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from goracs_ray.config import read_section
from goracs_ray.configutil import apply_overrides, from_dict
from goracs_ray.data.config import DataConfig, Domain, SourceKind
from goracs_ray.data.schema import Task

__all__ = ["config_from_args", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` and ``prepare`` subcommands."""
    data = subparsers.add_parser("data", help="built-in datasets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch", help="download a built-in dataset into the cache (ml-100k: from the recbole wheel)"
    )
    fetch.add_argument("name", choices=["ml-100k"])
    fetch.add_argument(
        "--cache-dir", type=Path, help="default: $GORACS_CACHE_DIR or ~/.cache/goracs_ray"
    )
    fetch.add_argument("--wheel", type=Path, help="use this recbole-1.2.1 wheel instead of pip")
    fetch.add_argument("--force", action="store_true", help="extract again even if cached")
    fetch.set_defaults(func=_run_fetch)

    prep = subparsers.add_parser("prepare", help="build SeqRec/CTR samples from interactions")
    prep.add_argument("--config", type=Path, help="YAML: a DataConfig, or a run config's `data:`")
    prep.add_argument("--out", type=Path, default=Path("prepared"), help="writes OUT/samples/")
    prep.add_argument("--source", choices=[k.value for k in SourceKind], help="source.kind")
    prep.add_argument("--path", help="source.path (interactions file or directory)")
    prep.add_argument("--items-path", help="source.items_path (meta / item table)")
    prep.add_argument("--task", choices=[t.value for t in Task])
    prep.add_argument("--domain", choices=[d.value for d in Domain])
    prep.add_argument("--max-users", type=int)
    prep.add_argument("--max-samples", type=int)
    prep.add_argument("--seed", type=int)
    prep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. source.columns.title=name",
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if up to date")
    prep.set_defaults(func=_run_prepare)


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """YAML (if any) ← flags ← ``--set`` overrides → a checked DataConfig."""
    data: dict[str, Any] = read_section(args.config, "data")
    flags = {
        "source.kind": args.source,
        "source.path": args.path,
        "source.items_path": args.items_path,
        "task": args.task,
        "domain": args.domain,
        "max_users": args.max_users,
        "max_samples": args.max_samples,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return from_dict(DataConfig, apply_overrides(data, args.set))


def _run_fetch(args: argparse.Namespace) -> int:
    from goracs_ray.data.fetch import fetch_ml100k

    print(fetch_ml100k(cache_dir=args.cache_dir, wheel=args.wheel, force=args.force))
    return 0


def _run_prepare(args: argparse.Namespace) -> int:
    from goracs_ray.data.prepare import CARD_NAME, prepare
    from goracs_ray.io import read_json

    out = prepare(config_from_args(args), args.out, force=args.force)
    card = read_json(out / CARD_NAME)
    counts = ", ".join(f"{s} {v['samples']}" for s, v in card["splits"].items())
    print(f"{out}: {card['task']} samples: {counts}; items {card['kept']['items']}")
    return 0
