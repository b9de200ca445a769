"""Configuration of the data stage: where interactions come from and how samples are built.

Loaded from the ``data:`` section of a run YAML (or a standalone YAML) through
:func:`goracs_ray.configutil.from_dict`; every field has a default and is checked when built.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from goracs_ray.data.schema import Task

__all__ = ["ColumnMap", "DataConfig", "Domain", "OnIssue", "SourceConfig", "SourceKind"]


class SourceKind(str, enum.Enum):
    """Format of the interaction data."""

    ML_100K = "ml-100k"
    """MovieLens-100K in RecBole atomic format (``goracs data fetch ml-100k`` or a local copy)."""
    RECBOLE = "recbole"
    """RecBole atomic files: ``<name>.inter`` + ``<name>.item`` (+ optional ``<name>.user``)."""
    AMAZON = "amazon"
    """Amazon Reviews 5-core JSON(.gz) + ``meta_*.json(.gz)``, 2014 or 2018 layout."""
    TABLE = "table"
    """Generic Parquet/CSV interactions + item table, columns named by ``source.columns``."""


class Domain(str, enum.Enum):
    """Wording of the prompts (what the items are and what the user did with them)."""

    MOVIES = "movies"
    GAMES = "games"
    FOOD = "food"
    GENERIC = "generic"


class OnIssue(str, enum.Enum):
    """What to do with a recoverable data problem (duplicates, items without titles)."""

    ERROR = "error"
    """Stop with an error naming the file and row (default)."""
    DROP = "drop"
    """Drop the offending rows and log a WARNING with their count."""


@dataclasses.dataclass
class ColumnMap:
    """Column names in the source files (RecBole: field names without the ``:type`` suffix)."""

    user: str = "user_id"
    """Interactions: user id column."""
    item: str = "item_id"
    """Interactions: item id column."""
    timestamp: str = "timestamp"
    """Interactions: event time in unix seconds (numeric; Parquet timestamp columns also work)."""
    rating: str | None = "rating"
    """Interactions: rating column; required for CTR, may be null for SeqRec."""
    item_id: str = "item_id"
    """Item table: item id column (joins ``item``)."""
    title: str = "title"
    """Item table: title column (RecBole ml-100k: ``movie_title``)."""
    year: str | None = None
    """Item table: optional release-year column (ml-100k: ``release_year``), used in the item
    descriptions the tiny base model is pretrained on."""
    genres: str | None = None
    """Item table: optional genres/categories column (ml-100k: ``class``), likewise."""


@dataclasses.dataclass
class SourceConfig:
    """Where the interactions and item titles are read from."""

    kind: SourceKind = SourceKind.ML_100K
    """Source format."""
    path: Path | None = None
    """Interactions: ml-100k/recbole: directory holding ``<name>.inter``/``.item`` (or the
    ``.inter`` file itself); amazon: the 5-core reviews file; table: the Parquet/CSV file.
    ml-100k: ``None`` uses the cache (fetched on first use). A pyarrow.fs URI
    (``s3://bucket/events.parquet``) is fetched into ``cache_dir`` (again when it changes)."""
    items_path: Path | None = None
    """Item titles: amazon: the ``meta_*.json(.gz)`` file; table: the Parquet/CSV item table;
    recbole: overrides ``<name>.item``."""
    cache_dir: Path | None = None
    """ml-100k and URI-input cache; ``None`` → ``$GORACS_CACHE_DIR`` or ``~/.cache/goracs_ray``."""
    columns: ColumnMap = dataclasses.field(default_factory=ColumnMap)
    """Column mapping (recbole, table)."""
    min_title_length: int = 2
    """Amazon title filter of the reference code: keep items whose title has at least this many
    characters (games/food: 2, i.e. ``len > 1``; movies: 51, i.e. ``len > 50``)."""
    append_brand: bool = False
    """Amazon (reference movies/food): title becomes ``"<title> - <brand>"`` when a brand exists."""
    on_duplicate: OnIssue = OnIssue.ERROR
    """Repeated (user, item, timestamp) events: error, or keep the first one."""
    on_missing_title: OnIssue = OnIssue.ERROR
    """Interactions with items that have no title in the item table: error, or drop them."""

    def __post_init__(self) -> None:
        if self.kind in (SourceKind.RECBOLE, SourceKind.AMAZON, SourceKind.TABLE) and (
            self.path is None
        ):
            raise ValueError(
                f"`source.path` is required for `source.kind: {self.kind.value}`; "
                "set it to the interactions file or directory"
            )
        if self.kind in (SourceKind.AMAZON, SourceKind.TABLE) and self.items_path is None:
            raise ValueError(
                f"`source.items_path` is required for `source.kind: {self.kind.value}`; "
                "set it to the item metadata / item table file"
            )
        if self.min_title_length < 1:
            raise ValueError(f"`source.min_title_length` must be ≥ 1, got {self.min_title_length}")


@dataclasses.dataclass
class DataConfig:
    """How samples are built from the source (METHOD.md §7)."""

    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    """Input data."""
    task: Task = Task.SEQREC
    """``seqrec`` (BIGRec next-title generation) or ``ctr`` (TALLRec Yes/No)."""
    domain: Domain = Domain.MOVIES
    """Prompt wording."""
    history_length: int = 10
    """L: at most this many previous items form the history."""
    min_history: int = 1
    """Skip samples with fewer history items (reference movies: 3)."""
    valid_size: int | float = 0.1
    """Valid block before the test block: a count (int) or a fraction in (0, 1)."""
    test_size: int | float = 0.1
    """Most recent samples by target timestamp: a count (int) or a fraction in (0, 1)."""
    split: str = "temporal"
    """``temporal`` (the reference): the most recent ``test_size`` samples → test, the
    ``valid_size`` before them → valid. ``final_block``: the most recent ``valid_size +
    test_size`` samples split at random (seeded) into valid and test, so that valid is drawn
    like test (on a small user slice the reference split gives them different users)."""
    early_stop_size: int | float = 0
    """Samples taken at random (seeded) out of the valid split into an ``early_stop`` split
    (``early_stop.parquet``): a count (int) or a fraction of valid in (0, 1). When > 0,
    fine-tuning early-stops on it and reports its loss as the valid loss, so that the valid
    samples selection matches (GORACS's OT target) are not also the ones that pick the epoch and
    measure the result; ``0`` (the reference): both use the whole valid split."""
    rating_threshold: float = 3.0
    """CTR: rating > threshold is a like ("Yes"); also splits the history."""
    num_negatives: int = 99
    """SeqRec: negatives per valid/test sample, from items outside the user's whole history."""
    max_users: int | None = None
    """Keep a seeded random subset of this many users (fast demos); ``None`` keeps all."""
    max_samples: int | None = None
    """Keep a seeded random subset of this many samples before splitting; ``None`` keeps all."""
    seed: int = 42
    """Seed of the user/sample caps and of the negatives."""

    def __post_init__(self) -> None:
        if self.history_length < 1:
            raise ValueError(f"`history_length` must be ≥ 1, got {self.history_length}")
        if not 0 <= self.min_history <= self.history_length:
            raise ValueError(
                f"`min_history` must be in [0, history_length={self.history_length}], "
                f"got {self.min_history}"
            )
        for name in ("valid_size", "test_size", "early_stop_size"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 <= value < 1.0:
                raise ValueError(
                    f"`{name}` as a fraction must be in [0, 1), got {value}; "
                    "write a whole number (e.g. 500) for a count"
                )
            if isinstance(value, int) and value < 0:
                raise ValueError(f"`{name}` must be ≥ 0, got {value}")
        if self.split not in ("temporal", "final_block"):
            raise ValueError(f"`split` must be 'temporal' or 'final_block', got {self.split!r}")
        if self.num_negatives < 0:
            raise ValueError(f"`num_negatives` must be ≥ 0, got {self.num_negatives}")
        for name in ("max_users", "max_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be ≥ 1 or null, got {value}")
        if self.task is Task.CTR and self.source.columns.rating is None:
            raise ValueError(
                "`task: ctr` needs ratings; set `source.columns.rating` to the rating column"
            )
