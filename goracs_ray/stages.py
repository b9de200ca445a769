"""Content-hash caching of pipeline stages.

A stage's key is the SHA-256 of its name, its resolved config and the keys of the stages it reads
from. Its output directory holds ``_stage.json`` with that key; a re-run with the same key is a
no-op, and changing one option re-runs exactly that stage and everything downstream of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from goracs_ray.configutil import to_dict
from goracs_ray.io import atomic_dir, read_json, write_json

__all__ = ["StageRecord", "run_stage", "stage_key"]

logger = logging.getLogger(__name__)

_MARKER = "_stage.json"


def stage_key(name: str, config: Any, upstream: Sequence[str] = ()) -> str:
    """Deterministic 16-hex-digit key of a stage: hash of (name, config, upstream keys)."""
    payload = json.dumps(
        {"stage": name, "config": to_dict(config), "upstream": list(upstream)},
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
    """Wall time of this invocation (≈ 0 when cached)."""


def run_stage(
    name: str,
    out_dir: Path,
    key: str,
    build: Callable[[Path], None],
    *,
    force: bool = False,
) -> StageRecord:
    """Run ``build(tmp_dir)`` unless ``out_dir`` already holds the output for ``key``.

    ``build`` writes the stage's artifacts into the empty directory it is given; that directory
    replaces ``out_dir`` atomically only if ``build`` returns normally.
    """
    marker = out_dir / _MARKER
    if not force and marker.is_file() and read_json(marker).get("key") == key:
        logger.info("stage %s: up to date (key %s), skipped", name, key)
        return StageRecord(name, key, str(out_dir), cached=True, seconds=0.0)
    logger.info("stage %s: running (key %s)", name, key)
    start = time.perf_counter()
    with atomic_dir(out_dir, overwrite=True) as part:
        build(part)
        seconds = time.perf_counter() - start
        write_json(part / _MARKER, {"stage": name, "key": key, "seconds": seconds})
    logger.info("stage %s: done in %.1f s", name, seconds)
    return StageRecord(name, key, str(out_dir), cached=False, seconds=seconds)
