"""Tiny interaction datasets written in every source format the data stage reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def make_events(n_users: int = 8, n_items: int = 40, per_user: int = 14, seed: int = 0):
    """(events, items): users u0.., items i00.., ratings 1–5, distinct per-user timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        stamps = np.sort(rng.choice(10_000, size=per_user, replace=False)) + 1_000_000
        for it, ts in zip(items, stamps):
            rows.append((f"u{u}", f"i{it:02d}", int(rng.integers(1, 6)), int(ts)))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    ids = [f"i{i:02d}" for i in range(n_items)]
    items = pd.DataFrame({"item_id": ids, "title": [f"Film {i}" for i in range(n_items)]})
    return events, items


def write_recbole(folder: Path, events: pd.DataFrame, items: pd.DataFrame, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter = events.rename(
        columns={
            "user_id": "user_id:token",
            "item_id": "item_id:token",
            "rating": "rating:float",
            "timestamp": "timestamp:float",
        }
    )
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    title_col = "movie_title:token_seq" if name == "ml-100k" else "title:token_seq"
    items.rename(columns={"item_id": "item_id:token", "title": title_col}).to_csv(
        folder / f"{name}.item", sep="\t", index=False
    )
    return folder


def write_amazon(folder: Path, events: pd.DataFrame, items: pd.DataFrame, year: int):
    folder.mkdir(parents=True, exist_ok=True)
    reviews = folder / ("reviews_Toys_5.json.gz" if year == 2014 else "Toys_5.json.gz")
    with gzip.open(reviews, "wt") as fh:
        for r in events.itertuples():
            obj = {
                "reviewerID": r.user_id,
                "asin": r.item_id,
                "overall": float(r.rating),
                "unixReviewTime": r.timestamp,
                "reviewText": "ok",
            }
            fh.write(json.dumps(obj) + "\n")
    meta = folder / "meta_Toys.json"
    with open(meta, "w") as fh:
        for r in items.itertuples():
            obj = {"asin": r.item_id, "title": r.title, "brand": "Acme"}
            fh.write((repr(obj) if year == 2014 else json.dumps(obj)) + "\n")
    return reviews, meta


def write_table(folder: Path, events: pd.DataFrame, items: pd.DataFrame, fmt: str):
    """Generic tables with non-default column names (user, movie, ts, stars; movie, name)."""
    folder.mkdir(parents=True, exist_ok=True)
    ev = events.rename(
        columns={"user_id": "user", "item_id": "movie", "timestamp": "ts", "rating": "stars"}
    )
    it = items.rename(columns={"item_id": "movie", "title": "name"})
    if fmt == "parquet":
        ev.to_parquet(folder / "events.parquet")
        it.to_parquet(folder / "items.parquet")
        return folder / "events.parquet", folder / "items.parquet"
    ev.to_csv(folder / "events.csv", index=False)
    it.to_csv(folder / "items.csv", index=False)
    return folder / "events.csv", folder / "items.csv"


TABLE_COLUMNS = {
    "user": "user",
    "item": "movie",
    "timestamp": "ts",
    "rating": "stars",
    "item_id": "movie",
    "title": "name",
}


def source_dict(kind: str, root: Path, events: pd.DataFrame, items: pd.DataFrame) -> dict:
    """Write the fixture in format ``kind`` under ``root``; return the `source:` config mapping."""
    if kind == "recbole":
        return {"kind": "recbole", "path": str(write_recbole(root, events, items, "toy"))}
    if kind == "ml-100k":
        return {"kind": "ml-100k", "path": str(write_recbole(root, events, items, "ml-100k"))}
    if kind.startswith("amazon"):
        reviews, meta = write_amazon(root, events, items, int(kind[-4:]))
        return {"kind": "amazon", "path": str(reviews), "items_path": str(meta)}
    inter, item_file = write_table(root, events, items, kind.split("-")[1])
    return {
        "kind": "table",
        "path": str(inter),
        "items_path": str(item_file),
        "columns": dict(TABLE_COLUMNS),
    }


@pytest.fixture
def toy():
    return make_events()


@pytest.fixture
def toy_source(tmp_path, toy):
    """Factory: ``toy_source(kind)`` writes the toy data in that format → `source:` mapping."""

    def build(kind: str, events: pd.DataFrame | None = None, items: pd.DataFrame | None = None):
        ev = toy[0] if events is None else events
        it = toy[1] if items is None else items
        return source_dict(kind, tmp_path / f"src-{kind}", ev, it)

    return build
