"""The data stage: source → ``<out>/samples/{train,valid,test,items}.parquet`` + dataset card.

``prepare`` is what ``goracs prepare`` and the pipeline call. The whole ``samples/`` directory is
written atomically; a re-run whose inputs (file checksums) and config hash to the same value as the
card on disk is a no-op, anything else needs ``force=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from goracs_ray.configutil import to_dict
from goracs_ray.data.config import DataConfig
from goracs_ray.data.fetch import sha256_file
from goracs_ray.data.samples import (
    SPLITS,
    assign_splits,
    build_samples,
    cap_samples,
    cap_users,
    draw_negatives,
    samples_to_table,
)
from goracs_ray.data.schema import ITEM_SCHEMA, SAMPLE_SCHEMA, Task
from goracs_ray.data.sources import load_source, source_files
from goracs_ray.io import atomic_dir, read_json, write_json, write_parquet

__all__ = ["CARD_NAME", "FORMAT_VERSION", "content_hash", "input_key", "prepare"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the builders change their output for the same inputs and config."""
CARD_NAME = "dataset_card.json"


def content_hash(cfg: DataConfig, checksums: dict[str, str]) -> str:
    """sha256 over the config (minus file locations) and the input files' checksums."""
    conf = to_dict(cfg)
    for key in ("path", "items_path", "cache_dir"):
        conf["source"].pop(key)
    payload = {"format": FORMAT_VERSION, "config": conf, "inputs": sorted(checksums.values())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def input_key(cfg: DataConfig) -> str:
    """Content hash of what ``prepare(cfg)`` reads: the config (minus file locations) and the
    sha256 of every input file, so an input edited in place gives a new key. Fetches ml-100k
    into its cache first if needed."""
    return content_hash(cfg, {str(p): sha256_file(p) for p in source_files(cfg.source)})


def prepare(
    cfg: DataConfig, out_dir: str | Path, *, force: bool = False, progress: bool | None = None
) -> Path:
    """Build the samples of ``cfg`` into ``<out_dir>/samples`` and return that directory.

    Parameters
    ----------
    cfg : DataConfig
        Source, task and split settings.
    out_dir : path
        Run/output directory; ``samples/`` is created inside it.
    force : bool
        Rebuild even if an up-to-date ``samples/`` exists; replace one built from other inputs.
    progress : bool, optional
        tqdm bars (``None``: only on a TTY).

    Raises
    ------
    FileExistsError
        If ``samples/`` exists, was built from other inputs/config, and ``force`` is False.
    ValueError, FileNotFoundError
        On bad input (see :mod:`goracs_ray.data.sources`); nothing is left behind.
    """
    out = Path(out_dir) / "samples"
    paths = source_files(cfg.source)
    checksums = {str(p): sha256_file(p) for p in paths}
    key = content_hash(cfg, checksums)
    if out.exists() and not force:
        old = _card_hash(out / CARD_NAME)
        if old == key:
            logger.info("`%s` is up to date (content hash %s…); nothing to do", out, key[:12])
            return out
        raise FileExistsError(
            f"`{out}` was prepared from other inputs or config (hash {str(old)[:12]}… ≠ "
            f"{key[:12]}…); pass --force (force=True) to rebuild it, or choose another output"
        )
    start = time.perf_counter()
    bar = tqdm(total=4, desc="prepare", disable=None if progress is None else not progress)
    with bar:
        data = load_source(cfg.source)
        events = cap_users(data.events, cfg.max_users, seed=cfg.seed)
        bar.update()
        samples = build_samples(
            events,
            data.titles,
            task=cfg.task,
            domain=cfg.domain,
            history_length=cfg.history_length,
            min_history=cfg.min_history,
            rating_threshold=cfg.rating_threshold,
            progress=progress,
        )
        if samples.empty:
            raise ValueError(
                f"`{paths[0]}`: no samples: none of the {events['user'].nunique()} users has more "
                f"than `min_history`={cfg.min_history} earlier interactions; lower "
                "`min_history` or use more data"
            )
        samples = assign_splits(
            cap_samples(samples, cfg.max_samples, seed=cfg.seed),
            cfg.valid_size,
            cfg.test_size,
            mode=cfg.split,
            seed=cfg.seed,
            early_stop_size=cfg.early_stop_size,
        )
        bar.update()
        catalog = np.sort(events["item"].unique()).astype(object)
        if cfg.task is Task.SEQREC and cfg.num_negatives > 0:
            held = (samples["split"] != "train").to_numpy()
            negs = draw_negatives(samples[held], events, catalog, cfg.num_negatives, seed=cfg.seed)
            samples.loc[held, "negatives"] = pd.Series(negs, index=samples.index[held])
        bar.update()
        card = _card(cfg, key, checksums, data, events, samples, catalog)
        card["seconds"] = round(time.perf_counter() - start, 3)
        _write(out, samples, catalog, data, card)
        bar.update()
    counts = {split: stats["samples"] for split, stats in card["splits"].items()}
    logger.info("prepared %s in %.1f s: %s samples", out, card["seconds"], counts)
    return out


def _card_hash(path: Path) -> str | None:
    try:
        return read_json(path).get("content_hash")
    except (OSError, ValueError, AttributeError):
        return None


def _write(out: Path, samples, catalog, data, card: dict[str, Any]) -> None:
    described = data.descriptions is not None
    items = pa.Table.from_pydict(
        {
            "item_id": catalog.tolist(),
            "title": data.titles.reindex(catalog).tolist(),
            "description": (
                data.descriptions.reindex(catalog).tolist() if described else [None] * len(catalog)
            ),
        },
        schema=ITEM_SCHEMA,
    )
    with atomic_dir(out, overwrite=True) as part:
        for split in _written_splits(samples):
            table = samples_to_table(samples[samples["split"] == split])
            write_parquet(part / f"{split}.parquet", table)
        write_parquet(part / "items.parquet", items)
        write_json(part / CARD_NAME, card)


def _written_splits(samples: pd.DataFrame) -> list[str]:
    """train, valid and test always; ``early_stop`` only when ``early_stop_size`` made one."""
    return [s for s in SPLITS if s != "early_stop" or (samples["split"] == s).any()]


def _split_stats(df: pd.DataFrame) -> dict[str, Any]:
    hist = df["history_items"].map(len)
    stats = {
        "samples": len(df),
        "users": int(df["user"].nunique()),
        "timestamp_min": int(df["timestamp"].min()) if len(df) else None,
        "timestamp_max": int(df["timestamp"].max()) if len(df) else None,
        "history_length_mean": round(float(hist.mean()), 4) if len(df) else None,
        "history_length_min": int(hist.min()) if len(df) else None,
        "history_length_max": int(hist.max()) if len(df) else None,
    }
    labels = df["label"].dropna()
    if len(labels):
        stats["label_positive_rate"] = round(float(labels.mean()), 4)
    return stats


def _counts(events: pd.DataFrame) -> dict[str, int]:
    return {
        "users": int(events["user"].nunique()),
        "items": int(events["item"].nunique()),
        "interactions": len(events),
    }


def _card(cfg, key, checksums, data, events, samples, catalog) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "content_hash": key,
        "task": cfg.task.value,
        "source": {
            "kind": cfg.source.kind.value,
            "files": checksums,
            "interactions_read": data.raw_interactions,
            **_counts(data.events),
        },
        "kept": _counts(events),
        "splits": {
            s: _split_stats(samples[samples["split"] == s]) for s in _written_splits(samples)
        },
        "schema": {f.name: str(f.type) for f in SAMPLE_SCHEMA},
        "config": to_dict(cfg),
    }
