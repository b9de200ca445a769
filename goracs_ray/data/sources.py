"""Read interaction sources into one validated shape (pure pandas/pyarrow, no Ray).

Every reader returns :class:`Interactions`: events ``(user, item, rating, timestamp)`` whose items
all have titles, plus the item titles. Bad input raises one
ValueError / FileNotFoundError naming the file, the line (text files, 1-based, header = line 1) or
row (Parquet, 0-based), the column, and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from goracs_ray.data.config import ColumnMap, OnIssue, SourceConfig, SourceKind
from goracs_ray.data.fetch import default_cache_dir, resolve_ml100k

__all__ = ["Interactions", "load_source", "source_files"]

logger = logging.getLogger(__name__)

_ML100K_COLUMNS = ColumnMap(title="movie_title", year="release_year", genres="class")


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Validated interactions of one source."""

    events: pd.DataFrame
    """Columns ``user`` (str), ``item`` (str), ``rating`` (float64, NaN when the source has no
    ratings), ``timestamp`` (int64 unix seconds), ``line`` (int64 location in ``events_file``); in
    file order."""
    titles: pd.Series
    """Title (str) indexed by item id (str), for every item in ``events``."""
    raw_interactions: int
    """Interactions in the source before any filtering."""
    descriptions: pd.Series | None = None
    """Catalog text (str) indexed by item id: the title plus year and genres where the source has
    them (``source.columns.year``/``genres``); None when it has neither."""


def _local_inputs(cfg: SourceConfig) -> SourceConfig:
    """``cfg`` with its ``path``/``items_path`` URIs (``s3://…``, any pyarrow.fs URI) replaced by
    local copies in the cache (:func:`goracs_ray.storage.fetch_input`)."""
    from goracs_ray.storage import fetch_input, is_uri

    cache = cfg.cache_dir or default_cache_dir()
    local = {
        name: fetch_input(os.fspath(value), cache, field=f"source.{name}")
        for name in ("path", "items_path")
        if is_uri(value := getattr(cfg, name))
    }
    return dataclasses.replace(cfg, **local) if local else cfg


def source_files(cfg: SourceConfig) -> tuple[Path, Path]:
    """The (interactions, items) files a source reads; fetches ml-100k into the cache, and
    URI inputs into a local copy, if needed."""
    cfg = _local_inputs(cfg)
    if cfg.kind is SourceKind.ML_100K:
        folder = resolve_ml100k(cfg.path, cache_dir=cfg.cache_dir)
        return folder / "ml-100k.inter", folder / "ml-100k.item"
    if cfg.kind is SourceKind.RECBOLE:
        inter = _recbole_inter(Path(cfg.path))
        items = Path(cfg.items_path) if cfg.items_path else inter.with_suffix(".item")
        return inter, _existing(items, "source.items_path")
    return _existing(Path(cfg.path), "source.path"), _existing(
        Path(cfg.items_path), "source.items_path"
    )


def load_source(cfg: SourceConfig) -> Interactions:
    """Read and validate the interactions and titles named by ``cfg``."""
    inter_path, items_path = source_files(cfg)
    if cfg.kind is SourceKind.AMAZON:
        from goracs_ray.data.amazon import read_amazon

        raw, items, dropped = read_amazon(
            inter_path,
            items_path,
            min_title_length=cfg.min_title_length,
            append_brand=cfg.append_brand,
        )
        cols, unit, item_unit = ColumnMap(), "line", "line"
    else:
        cols = _ML100K_COLUMNS if cfg.kind is SourceKind.ML_100K else cfg.columns
        raw, unit = _read_table(inter_path)
        items, item_unit = _read_table(items_path)
        dropped = 0
    events = normalize_events(raw, inter_path, cols, unit=unit)
    titles = normalize_titles(items, items_path, cols, unit=item_unit)
    events = drop_duplicates(events, inter_path, policy=cfg.on_duplicate, unit=unit)
    events = attach_titles(events, titles, inter_path, items_path, cfg.on_missing_title, unit)
    if events.empty:
        raise ValueError(
            f"`{inter_path}`: no interactions left after filtering ({len(raw)} read, {dropped} on "
            "items removed by the title filter); check `source.min_title_length`, "
            "`source.on_missing_title` and that item ids match between the two files"
        )
    titles = titles[titles.index.isin(events["item"].unique())]
    if cfg.kind is SourceKind.ML_100K:  # a trimmed copy may lack them: use what is there
        absent = {k: None for k in ("year", "genres") if getattr(cols, k) not in items.columns}
        cols = dataclasses.replace(cols, **absent)
    descriptions = item_descriptions(items, items_path, cols, titles, unit=item_unit)
    return Interactions(events.reset_index(drop=True), titles, len(raw) + dropped, descriptions)


def _existing(path: Path, field: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"`{field}`: file `{path}` does not exist; check the path")
    return path


def _recbole_inter(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"`source.path`: directory `{path}` holds {len(found)} `.inter` files, expected "
                "one; point `source.path` at the `.inter` file itself"
            )
        return found[0]
    return _existing(path, "source.path")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn low-level read failures of ``path`` into one ValueError naming the file."""
    try:
        yield
    except (
        OSError,
        EOFError,
        UnicodeDecodeError,
        zlib.error,
        pa.ArrowException,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
    ) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(
            f"`{path}` is unreadable or truncated ({type(exc).__name__}: {exc}); "
            "re-download or regenerate the file"
        ) from exc


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A Parquet, CSV or RecBole atomic file → (frame, location unit); ``line`` column added."""
    name = path.name.lower().removesuffix(".gz")
    with reading(path):
        if name.endswith(".parquet"):
            df = pq.read_table(path).to_pandas()
            df["line"] = np.arange(len(df), dtype=np.int64)
            return df, "row"
        recbole = name.endswith((".inter", ".item", ".user"))
        df = pd.read_csv(
            path,
            sep="\t" if recbole or name.endswith(".tsv") else ",",
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE if recbole else csv.QUOTE_MINIMAL,
            compression="infer",
        )
    if recbole:
        df.columns = [c.split(":", 1)[0] for c in df.columns]
    df["line"] = np.arange(2, len(df) + 2, dtype=np.int64)
    return df, "line"


def _require(df: pd.DataFrame, path: Path, fields: dict[str, str | None]) -> None:
    for field, column in fields.items():
        if column is not None and column not in df.columns:
            available = ", ".join(f"`{c}`" for c in df.columns if c != "line")
            raise ValueError(
                f"`{path}`: column `{column}` (`source.columns.{field}`) not found; available: "
                f"{available}. Set `source.columns.{field}` to the right column"
            )


def _where(df: pd.DataFrame, pos: int, unit: str) -> str:
    return f"{unit} {int(df['line'].iloc[pos])}"


def _ids(df: pd.DataFrame, column: str, path: Path, unit: str) -> pd.Series:
    s = df[column]
    if pd.api.types.is_float_dtype(s) and s.notna().all() and (s % 1 == 0).all():
        s = s.astype(np.int64)
    out = s.astype(str).str.strip()
    missing = s.isna().to_numpy() | (out == "").to_numpy()
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"`{path}` {_where(df, pos, unit)}: column `{column}` is empty "
            f"({int(missing.sum())} such rows); fill in the id or remove the row"
        )
    return out


_MAX_TIMESTAMP = 1e15
"""Largest |timestamp| accepted: ~31 million years in seconds (or 31,000 in milliseconds), far
inside int64, so a corrupt value is refused instead of wrapping around."""


def _numbers(df: pd.DataFrame, column: str, path: Path, unit: str, what: str) -> np.ndarray:
    s = df[column]
    if pd.api.types.is_datetime64_any_dtype(s):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return ((s - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(np.float64)
    if pd.api.types.is_bool_dtype(s):
        values = np.full(len(s), np.nan)
    else:
        values = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`{path}` {_where(df, pos, unit)}: column `{column}` value {s.iloc[pos]!r} is not "
            f"a number ({int(bad.sum())} such rows); {what} must be numeric"
        )
    return values


def normalize_events(df: pd.DataFrame, path: Path, cols: ColumnMap, *, unit: str) -> pd.DataFrame:
    """Check and convert the interaction columns named by ``cols`` (see :class:`Interactions`)."""
    _require(df, path, {"user": cols.user, "item": cols.item, "timestamp": cols.timestamp})
    _require(df, path, {"rating": cols.rating})
    ts = _numbers(df, cols.timestamp, path, unit, "timestamps (unix seconds)")
    huge = np.abs(ts) >= _MAX_TIMESTAMP
    if huge.any():  # would wrap around in int64
        pos = int(np.flatnonzero(huge)[0])
        raise ValueError(
            f"`{path}` {_where(df, pos, unit)}: column `{cols.timestamp}` value "
            f"{df[cols.timestamp].iloc[pos]!r} is not a plausible unix time ({int(huge.sum())} "
            f"such rows; |t| must be < {_MAX_TIMESTAMP:.0e}); fix or drop those rows"
        )
    rating = (
        _numbers(df, cols.rating, path, unit, "ratings")
        if cols.rating is not None
        else np.full(len(df), np.nan)
    )
    return pd.DataFrame(
        {
            "user": _ids(df, cols.user, path, unit).to_numpy(),
            "item": _ids(df, cols.item, path, unit).to_numpy(),
            "rating": rating,
            "timestamp": np.floor(ts).astype(np.int64),
            "line": df["line"].to_numpy(np.int64),
        }
    )


def normalize_titles(
    df: pd.DataFrame, path: Path, cols: ColumnMap, *, unit: str = "line"
) -> pd.Series:
    """Item table → title (str) indexed by item id (str); empty titles are left out."""
    _require(df, path, {"item_id": cols.item_id, "title": cols.title})
    ids = _ids(df, cols.item_id, path, unit)
    titles = df[cols.title].astype("string").fillna("").str.strip()
    out = pd.Series(titles.to_numpy(dtype=object), index=ids.to_numpy(), name="title")
    out = out[out != ""]
    dup = out.index.duplicated(keep="first")
    if dup.any():
        logger.warning("`%s`: %d repeated item ids; the first title is used", path, dup.sum())
        out = out[~dup]
    return out


def item_descriptions(
    df: pd.DataFrame, path: Path, cols: ColumnMap, titles: pd.Series, *, unit: str = "line"
) -> pd.Series | None:
    """``"Title (1995), Animation Children's Comedy"`` per item of ``titles`` (same index), from
    the optional ``cols.year`` / ``cols.genres`` columns; None when neither is configured.

    Catalog facts only (what a general LLM knows about an item), never interactions.
    """
    extra = {"year": cols.year, "genres": cols.genres}
    if all(c is None for c in extra.values()):
        return None
    _require(df, path, extra)
    table = df.assign(_id=_ids(df, cols.item_id, path, unit)).drop_duplicates("_id")
    table = table.set_index("_id").reindex(titles.index)

    def column(name: str | None) -> pd.Series:
        if name is None:
            return pd.Series("", index=titles.index)
        return table[name].astype("string").fillna("").str.strip()

    year, genres = column(cols.year), column(cols.genres)
    text = titles.astype(str) + np.where(year != "", " (" + year + ")", "")
    text = text + np.where(genres != "", ", " + genres, "")
    return pd.Series(text.to_numpy(dtype=object), index=titles.index, name="description")


def drop_duplicates(
    events: pd.DataFrame, path: Path, *, policy: OnIssue, unit: str = "line"
) -> pd.DataFrame:
    """Repeated (user, item, timestamp) events: raise, or keep the first (``policy``)."""
    dup = events.duplicated(["user", "item", "timestamp"], keep="first").to_numpy()
    if not dup.any():
        return events
    if policy is OnIssue.DROP:
        logger.warning("`%s`: dropped %d duplicate interactions", path, int(dup.sum()))
        return events[~dup]
    pos = int(np.flatnonzero(dup)[0])
    row = events.iloc[pos]
    first = events[
        (events["user"] == row["user"])
        & (events["item"] == row["item"])
        & (events["timestamp"] == row["timestamp"])
    ]["line"].iloc[0]
    raise ValueError(
        f"`{path}` {unit} {row['line']} repeats {unit} {first} (user `{row['user']}`, item "
        f"`{row['item']}`, timestamp {row['timestamp']}; {int(dup.sum())} duplicates in all); "
        "remove them or set `source.on_duplicate: drop` to keep the first of each"
    )


def attach_titles(
    events: pd.DataFrame,
    titles: pd.Series,
    inter_path: Path,
    items_path: Path,
    policy: OnIssue,
    unit: str = "line",
) -> pd.DataFrame:
    """Keep events whose item has a title; items without one raise or are dropped (``policy``)."""
    has = events["item"].isin(titles.index).to_numpy()
    if has.all():
        return events
    missing = events.loc[~has, "item"].unique()
    if policy is OnIssue.DROP:
        logger.warning(
            "dropped %d interactions on %d items without a title in `%s`",
            int((~has).sum()),
            len(missing),
            items_path,
        )
        return events[has]
    pos = int(np.flatnonzero(~has)[0])
    raise ValueError(
        f"`{items_path}`: item `{events['item'].iloc[pos]}` (used at `{inter_path}` "
        f"{_where(events, pos, unit)}) has no title; {len(missing)} items lack one. Add the "
        "titles, fix `source.columns.item_id`/`title`, or set `source.on_missing_title: drop`"
    )
