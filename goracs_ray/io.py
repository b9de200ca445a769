"""Atomic, self-describing artifacts.

Every stage output is written to ``<path>.part`` and renamed into place only when complete, so a
crash or a bad input never leaves a half-written artifact where a later stage would read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "check_output",
    "portable_path",
    "atomic_dir",
    "atomic_file",
    "read_json",
    "write_json",
    "write_parquet",
]


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"`{path}` already exists. Pass --overwrite (overwrite=True) to replace it, "
            "or choose another output path."
        )


def portable_path(path: str | os.PathLike[str] | None, base: str | os.PathLike[str]) -> str | None:
    """``path`` as written into an artifact in ``base``: relative to ``base`` for a local path
    (so a run directory moved as a whole still resolves), unchanged for a URI (``s3://…``)."""
    if path is None:
        return None
    text = os.fspath(path)
    if "://" in text:
        return text
    return os.path.relpath(Path(text).resolve(), Path(base).resolve())


def check_output(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    *,
    overwrite: bool = False,
    flag: str = "--out",
) -> Path:
    """Check, before any work, that ``out`` can be written: it does not exist (or ``overwrite``),
    it is not, does not contain and does not lie inside any of ``inputs`` (so ``--overwrite``
    never deletes an input), and its nearest existing parent is a writable directory.

    Returns ``out`` as a Path.

    Raises
    ------
    FileExistsError, ValueError, PermissionError
        Naming ``flag``, the path and the fix.
    """
    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target):
            raise ValueError(
                f"{flag} `{out}` overlaps the input `{given}`; writing it would replace or delete "
                "that input. Choose an output path outside every input"
            )
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{flag} `{out}` already exists. Pass --overwrite (overwrite=True) to replace it, "
            "or choose another output path."
        )
    parent = target if target.is_dir() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} `{out}`: `{parent}` is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} `{out}`: `{parent}` is not writable; choose another path")
    return Path(out)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary ``<path>.part`` directory that replaces ``path`` on success.

    On any exception the ``.part`` directory is removed and ``path`` is left untouched.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    _prepare_target(target, overwrite)
    part = target.with_name(target.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        yield part
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(part, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(part, target)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path that is renamed to ``path`` when the block succeeds."""
    target = Path(path)
    _prepare_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        yield part
        os.replace(part, target)
    finally:
        if part.exists():
            part.unlink()


def write_json(path: str | os.PathLike[str], obj: Any, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically. Returns the final path."""
    with atomic_file(path, overwrite=overwrite) as part:
        part.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike[str], table: pa.Table, *, overwrite: bool = True) -> Path:
    """Write a pyarrow table to Parquet atomically. Returns the final path."""
    with atomic_file(path, overwrite=overwrite) as part:
        pq.write_table(table, part)
    return Path(path)


def _json_default(obj: Any) -> Any:
    """Serialise numpy scalars/arrays, paths and enums in JSON artifacts."""
    import enum

    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
