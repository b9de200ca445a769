"""Content-hash caching of pipeline stages.

A stage's key is the SHA-256 of its name, its resolved config and the keys of the stages it reads
from. Its output directory holds ``_stage.json`` with that key; a re-run with the same key is a
no-op, and changing one option re-runs exactly that stage and everything downstream of it.

Every marker also records the run directory's format (:data:`RUN_FORMAT`). A run directory
holding stages of another format (one made before the format changed) is refused with one error
(:func:`check_run_format`) instead of being rebuilt over; ``--force`` rebuilds it in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goracs_ray.configutil import to_dict
from goracs_ray.io import atomic_dir, read_json, write_json
from goracs_ray.storage import MARKER as _MARKER

if TYPE_CHECKING:
    from goracs_ray.storage import RunMirror

__all__ = [
    "RUN_FORMAT",
    "StageGraph",
    "StageRecord",
    "StaleRunDirError",
    "check_run_format",
    "run_stage",
    "stage_key",
]

logger = logging.getLogger(__name__)

RUN_FORMAT = 2
"""Format of the stages in a run directory: written into every ``_stage.json`` and folded into
every stage key. Bump it when a stage's output or config changes meaning in a way its key would
not show. History: 1 (markers without a ``format`` field), the layout before the one ``model:``
section, when model settings lived under ``features``, ``train`` and ``eval``; 2, one
``model:`` section read by every stage."""

_PENDING = ".*.pending.json"
"""Glob of the in-progress markers of resumable stages (see :func:`run_stage`)."""


class StaleRunDirError(ValueError):
    """A run directory holds stages written in another :data:`RUN_FORMAT`."""


def marker_format(marker: dict[str, Any]) -> int:
    """The run format a stage marker (``_stage.json`` contents) was written in."""
    return int(marker.get("format", 1))


def check_run_format(
    run_dir: Path, mirror: RunMirror | None = None, *, force: bool = False, where: str = ""
) -> None:
    """Refuse a run directory whose stages were written in another :data:`RUN_FORMAT`.

    Looks at every stage marker and in-progress marker under ``run_dir`` and, for a URI
    ``run_dir``, at every marker of the remote copy. ``force`` (``--force``) skips the check:
    every stage is then rebuilt in place.

    Raises
    ------
    StaleRunDirError
        Some stage was written in another format; names them, their format, and the two ways
        out (a new ``run_dir``, or ``--force``).
    """
    if force:
        return
    found: dict[str, int] = {}
    if run_dir.is_dir():
        for path in [*run_dir.rglob(_MARKER), *run_dir.rglob(_PENDING)]:
            try:
                marker = read_json(path)
            except (OSError, ValueError):
                marker = {}  # unreadable: treat as the oldest format, never reuse it
            fmt = marker_format(marker) if isinstance(marker, dict) else 1
            if fmt != RUN_FORMAT:
                found[str(path.relative_to(run_dir))] = fmt
    if mirror is not None:
        for name, marker in mirror.markers().items():
            if (fmt := marker_format(marker)) != RUN_FORMAT:
                found[f"{mirror.uri}/{name}/{_MARKER}"] = fmt
    if not found:
        return
    formats = sorted(set(found.values()))
    age = "an older" if max(formats) < RUN_FORMAT else "another"
    shown = ", ".join(sorted(found)[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise StaleRunDirError(
        f"run_dir {where or run_dir}: {len(found)} stage(s) were written by {age} goracs_ray "
        f"(run format {'/'.join(map(str, formats))}; this version writes format {RUN_FORMAT}): "
        f"{shown}. Their outputs cannot be reused. Use a new run_dir, or rerun with --force "
        "(force=True in the Python API) to rebuild its stages in place, replacing their "
        "old outputs."
    )


def code_version() -> str:
    """The installed goracs_ray version: part of every stage key, so a new release recomputes."""
    from importlib import metadata

    try:
        return metadata.version("goracs_ray")
    except metadata.PackageNotFoundError:
        return "unknown"


def stage_key(name: str, config: Any, upstream: Sequence[str] = ()) -> str:
    """Deterministic 16-hex-digit key of a stage: hash of (name, config, upstream keys, the
    goracs_ray version, :data:`RUN_FORMAT`)."""
    payload = json.dumps(
        {
            "stage": name,
            "config": to_dict(config),
            "upstream": list(upstream),
            "code": code_version(),
            "format": RUN_FORMAT,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """What one stage did in a run (goes into manifest.json)."""

    name: str
    """Stage name, e.g. ``"select/goracs"``."""
    key: str
    """Content key (see :func:`stage_key`)."""
    out_dir: str
    """Where its artifacts are."""
    cached: bool
    """True when the stage was skipped because its output for this key already existed."""
    seconds: float
    """Wall time of the build that made the output: this invocation's, or, when cached, the
    original run's (read back from the stage's ``_stage.json``)."""


def _marker(name: str, key: str, seconds: float) -> dict[str, Any]:
    """Contents of a finished stage's ``_stage.json``."""
    return {"stage": name, "key": key, "seconds": seconds, "format": RUN_FORMAT}


def run_stage(
    name: str,
    out_dir: Path,
    key: str,
    build: Callable[..., object],
    *,
    force: bool = False,
    atomic: bool = True,
) -> StageRecord:
    """Run a stage unless ``out_dir`` already holds its complete output for ``key``.

    ``atomic=True``: ``build(tmp_dir)`` writes into an empty directory that replaces ``out_dir``
    only if ``build`` returns normally. ``atomic=False`` (resumable stages such as features):
    ``build(out_dir)`` writes in place; ``out_dir`` is then either absent or holds the partial
    output of an interrupted run with the same key (output of any other key is deleted first),
    so a resumable ``build`` keeps its finished shards.
    """
    marker = out_dir / _MARKER
    pending = out_dir.with_name(f".{out_dir.name}.pending.json")
    if not force and marker.is_file() and (done := read_json(marker)).get("key") == key:
        logger.info("stage %s: up to date (key %s), skipped", name, key)
        seconds = float(done.get("seconds", 0.0))
        return StageRecord(name, key, str(out_dir), cached=True, seconds=seconds)
    if marker.is_file() and not force:  # made by other settings, inputs or goracs_ray version
        logger.info(
            "stage %s: its output was built from other settings, inputs or goracs_ray version "
            "(key %s); rebuilding it (key %s)",
            name,
            read_json(marker).get("key"),
            key,
        )
    else:
        logger.info("stage %s: running (key %s)", name, key)
    start = time.perf_counter()
    if atomic:
        with atomic_dir(out_dir, overwrite=True) as part:
            build(part)
            seconds = time.perf_counter() - start
            write_json(part / _MARKER, _marker(name, key, seconds))
    else:
        resume = not force and pending.is_file() and read_json(pending).get("key") == key
        if not resume and out_dir.exists():
            shutil.rmtree(out_dir)
        write_json(pending, {"stage": name, "key": key, "format": RUN_FORMAT})
        build(out_dir)
        seconds = time.perf_counter() - start
        write_json(marker, _marker(name, key, seconds))
        pending.unlink()
    logger.debug("stage %s: done in %.1f s", name, seconds)  # the run's summary lists every time
    return StageRecord(name, key, str(out_dir), cached=False, seconds=seconds)


@dataclasses.dataclass
class StageGraph:
    """Runs named stages under one run directory, each in ``run_dir / name``, keeping records.

    ``graph.run("select/goracs", cfg, [features.key], build)`` keys the stage by its config and
    the keys of the stages it reads, skips it when its output for that key exists, and returns
    the :class:`StageRecord` (whose ``key`` downstream stages list as upstream).
    """

    run_dir: Path
    """Root of every stage's output directory."""
    force: bool = False
    """Re-run every stage, ignoring cached outputs."""
    records: list[StageRecord] = dataclasses.field(default_factory=list)
    """Every stage run so far, in order."""
    dry_run: bool = False
    """Only compute keys and whether each output is cached (``cached``); build nothing."""
    mirror: RunMirror | None = None
    """The remote copy of the run (``run_dir`` a URI): finished stages are pulled from it
    before running and published to it after (:mod:`goracs_ray.storage`)."""

    def run(
        self,
        name: str,
        config: Any,
        upstream: Sequence[str],
        build: Callable[..., object],
        *,
        atomic: bool = True,
    ) -> StageRecord:
        """:func:`run_stage` of ``name`` into ``run_dir / name``; the record is kept."""
        key = stage_key(name, config, upstream)
        if self.dry_run:
            marker = self.run_dir / name / _MARKER
            done = read_json(marker) if marker.is_file() else {}
            cached = not self.force and done.get("key") == key
            if not cached and not self.force and self.mirror is not None:
                cached = self.mirror.marker_key(name) == key  # pulled, not built, when run
            seconds = float(done.get("seconds", 0.0)) if cached else 0.0
            record = StageRecord(name, key, str(self.run_dir / name), cached, seconds)
            self.records.append(record)
            return record
        out_dir = self.run_dir / name
        if self.mirror is not None and not self.force:
            self.mirror.pull_stage(name, key, out_dir)
        record = run_stage(name, out_dir, key, build, force=self.force, atomic=atomic)
        if self.mirror is not None:
            self.mirror.push_stage(name, key, out_dir)
        self.records.append(record)
        return record

    def publish(self, names: Sequence[str]) -> None:
        """Upload the run's top-level files ``names`` to the mirror (no-op for a local run)."""
        if self.mirror is not None:
            self.mirror.push_files(self.run_dir, names)
