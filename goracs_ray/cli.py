"""`goracs` command-line entry point: a thin router.

Each stage package exposes ``<package>.cli.register(subparsers)``, which adds one subcommand whose
handler parses its flags, calls one library function and returns an exit code. This module only
wires them together, sets up logging and turns user errors into one readable line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
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


def version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare source tree)."""
    try:
        return importlib.metadata.version("goracs_ray")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser(
    command: str | None = None, *, subcommands: bool = True
) -> argparse.ArgumentParser:
    """The `goracs` parser: with ``command``, only the module defining it is imported.

    ``subcommands=False`` registers none (``goracs --version`` imports no stage module).
    """
    parser = argparse.ArgumentParser(
        prog="goracs",
        description="GORACS coreset selection for LLM recommenders, on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"goracs_ray {version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if not subcommands:
        modules = []
    elif command in _COMMANDS:
        modules = [_COMMANDS[command]]
    else:
        modules = list(dict.fromkeys(_COMMANDS.values()))
    for module in modules:
        importlib.import_module(module).register(subparsers)
    return parser


def quiet_ray_logs() -> None:
    """The CLI's default: Ray Data's console lines at WARNING (its log file keeps everything)
    without the advisories about settings goracs_ray chose, no Hugging Face progress bars when
    stderr is not a terminal, one Ray-internal deprecation warning hidden, and Ray's default
    token auth made explicit (``RAY_AUTH_MODE=token``, so Ray does not announce it).

    Set before Ray is imported, so the driver and every worker of an embedded Ray read it; a
    value the user exported wins. Only the CLI does this: the library changes no Ray setting.
    """
    from importlib.resources import files

    config = files("goracs_ray").joinpath("ray_data_logging.yaml")
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(config))
    if not sys.stderr.isatty():  # a log file: HF's bars (weights loaded, shards written) are noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Ray Train 2.60 sets an option Ray Data 2.60 deprecates (a warning per fine-tune, in a Ray
    # actor): hidden in the processes of the embedded Ray, as the user can do nothing about it.
    os.environ.setdefault(
        "PYTHONWARNINGS", "ignore:`ExecutionOptions.exclude_resources` is deprecated"
    )
    # Ray 2.60's default (token auth on, a token generated if none exists) made explicit, which
    # spares the "token authentication is enabled by default" notice on every run.
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    bare_version = command is None and "--version" in argv
    args = build_parser(command, subcommands=not bare_version).parse_args(argv)
    # Default: goracs_ray's own INFO lines and everyone's warnings; -v: everything at DEBUG.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("goracs_ray").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        quiet_ray_logs()
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"goracs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
