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

# Subcommand → the module whose `register` adds it (help order). Only the module of the command
# being run is imported, so e.g. `goracs select` never loads torch (memory) or Ray (start-up).
_COMMANDS: dict[str, str] = {
    "data": "goracs_ray.data.cli",
    "prepare": "goracs_ray.data.cli",
    "features": "goracs_ray.features.cli",
    "model": "goracs_ray.models.cli",
    "select": "goracs_ray.select.cli",
    "finetune": "goracs_ray.train.cli",
    "evaluate": "goracs_ray.evaluate.cli",
    "run": "goracs_ray.run_cli",
    "config": "goracs_ray.run_cli",
    "bench": "goracs_ray.bench.cli",
}

# OSError covers missing, unreadable and unwritable files (PermissionError, IsADirectoryError, …);
# EOFError an empty or truncated .npy; their messages name the file.
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, EOFError)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `goracs` parser: with ``command``, only the module defining it is imported."""
    parser = argparse.ArgumentParser(
        prog="goracs",
        description="GORACS coreset selection for LLM recommenders, on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (
        [_COMMANDS[command]] if command in _COMMANDS else list(dict.fromkeys(_COMMANDS.values()))
    )
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
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
