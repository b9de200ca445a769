"""`goracs` command-line entry point: a thin router.

Each stage package exposes ``<package>.cli.register(subparsers)``, which adds one subcommand whose
handler parses its flags, calls one library function and returns an exit code. This module only
wires them together, sets up logging and turns user errors into one readable line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

# One entry per stage package that contributes subcommands, in the order shown in --help.
_COMMAND_MODULES: tuple[str, ...] = (
    "goracs_ray.data.cli",
    "goracs_ray.features.cli",
    "goracs_ray.select.cli",
    "goracs_ray.train.cli",
    "goracs_ray.evaluate.cli",
    "goracs_ray.run_cli",
)

_USER_ERRORS = (ValueError, TypeError, FileExistsError, FileNotFoundError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    """Build the full `goracs` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="goracs",
        description="GORACS coreset selection for LLM recommenders, on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"goracs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
