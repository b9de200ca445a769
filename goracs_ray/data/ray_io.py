"""Ray shell of the data stage: read prepared samples as a Ray Dataset for later stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from goracs_ray.data.samples import SPLITS
from goracs_ray.data.schema import SAMPLE_SCHEMA

if TYPE_CHECKING:
    import ray.data

__all__ = ["load_samples_ray"]


def samples_file(path: str | Path, split: str) -> Path:
    """``<path>/<split>.parquet``, where ``path`` is a ``samples/`` dir or the run dir above it."""
    if split not in (*SPLITS, "items"):
        raise ValueError(f"`split` must be one of {', '.join(SPLITS)} or items, got {split!r}")
    root = Path(path)
    if not (root / f"{split}.parquet").is_file() and (root / "samples").is_dir():
        root = root / "samples"
    file = root / f"{split}.parquet"
    if not file.is_file():
        raise FileNotFoundError(
            f"`{file}` does not exist; run `goracs prepare` first or check the `path` argument"
        )
    return file


def load_samples_ray(
    path: str | Path, split: str, *, num_blocks: int | None = None
) -> ray.data.Dataset:
    """Read one split of prepared samples with ``ray.data.read_parquet``.

    Parameters
    ----------
    path : path
        The ``samples/`` directory written by :func:`goracs_ray.data.prepare.prepare` (or the run
        directory holding it).
    split : {"train", "valid", "test", "items"}
    num_blocks : int, optional
        Number of blocks (a one-file split is read as one block, then repartitioned); ``None``
        keeps what the reader produces.

    Returns
    -------
    ray.data.Dataset
        Rows with the columns of ``SAMPLE_SCHEMA`` (``ITEM_SCHEMA`` for ``items``).
    """
    import ray.data

    file = samples_file(path, split)
    schema = None if split == "items" else SAMPLE_SCHEMA
    if num_blocks is not None and num_blocks < 1:
        raise ValueError(f"`num_blocks` must be ≥ 1 or None, got {num_blocks}")
    ds = ray.data.read_parquet(str(file), schema=schema)
    return ds if num_blocks is None else ds.repartition(num_blocks)
