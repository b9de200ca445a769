"""Amazon Reviews 5-core dumps (McAuley lab, 2014 and 2018 layouts).

Reviews: one JSON object per line with ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``
(both years). Meta: one object per line with ``asin``, ``title`` and optionally ``brand``; strict
JSON in 2018, Python dict literals (single quotes) in 2014. Files may be gzip-compressed (``.gz``).
The reference code's title filters are options: keep titles with at least ``min_title_length``
characters (games/food 2, movies 51) and optionally append ``" - <brand>"``.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from goracs_ray.data.sources import reading

__all__ = ["read_amazon"]

logger = logging.getLogger(__name__)

REVIEW_KEYS = ("reviewerID", "asin", "overall", "unixReviewTime")


def _open(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; JSON first, then a Python literal."""
    with reading(path), _open(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                try:
                    obj = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(
                        f"`{path}` line {number}: not a JSON object or Python dict ({exc}); the "
                        "file is truncated or not an Amazon reviews/meta dump"
                    ) from None
            if not isinstance(obj, dict):
                raise ValueError(f"`{path}` line {number}: expected an object, got {obj!r:.80}")
            yield number, obj


def _read_reviews(path: Path) -> pd.DataFrame:
    rows: dict[str, list[Any]] = {k: [] for k in (*REVIEW_KEYS, "line")}
    for number, obj in _records(path):
        for key in REVIEW_KEYS:
            if key not in obj:
                raise ValueError(
                    f"`{path}` line {number}: field `{key}` is missing; an Amazon 5-core review "
                    f"needs {', '.join(REVIEW_KEYS)} — is this the reviews file (not the meta)?"
                )
            rows[key].append(obj[key])
        rows["line"].append(number)
    if not rows["line"]:
        raise ValueError(f"`{path}` holds no reviews; check `source.path`")
    df = pd.DataFrame(rows)
    df["line"] = df["line"].astype(np.int64)
    return df.rename(
        columns={
            "reviewerID": "user_id",
            "asin": "item_id",
            "overall": "rating",
            "unixReviewTime": "timestamp",
        }
    )


def _read_meta(path: Path, *, min_title_length: int, append_brand: bool) -> tuple[dict, set]:
    """asin → title for titles passing the filter, and the asins the filter removed."""
    kept: dict[str, str] = {}
    removed: set[str] = set()
    for number, obj in _records(path):
        asin = obj.get("asin")
        if not isinstance(asin, str) or not asin:
            raise ValueError(
                f"`{path}` line {number}: field `asin` is missing or empty; is this the "
                "`meta_*.json` file of the same category?"
            )
        title = obj.get("title")
        title = title.strip() if isinstance(title, str) else ""
        if len(title) < min_title_length:
            removed.add(asin)
            continue
        brand = obj.get("brand")
        if append_brand and isinstance(brand, str) and brand.strip():
            title = f"{title} - {brand.strip()}"
        kept.setdefault(asin, title)
    return kept, removed - set(kept)


def read_amazon(
    reviews: Path, meta: Path, *, min_title_length: int = 2, append_brand: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a 5-core reviews file and its meta file.

    Returns
    -------
    events : DataFrame
        ``user_id, item_id, rating, timestamp, line`` for reviews on items kept by the filter.
    items : DataFrame
        ``item_id, title, line`` of the kept items.
    dropped : int
        Reviews removed because the title filter removed their item.
    """
    events = _read_reviews(reviews)
    titles, removed = _read_meta(meta, min_title_length=min_title_length, append_brand=append_brand)
    filtered = events["item_id"].isin(removed).to_numpy()
    if filtered.any():
        logger.info(
            "title filter (min_title_length=%d) removed %d reviews on %d items",
            min_title_length,
            int(filtered.sum()),
            len(removed),
        )
    items = pd.DataFrame({"item_id": list(titles), "title": list(titles.values()), "line": 0})
    return events[~filtered].reset_index(drop=True), items, int(filtered.sum())
