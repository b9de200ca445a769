"""Selection outputs: ``coreset.parquet``, ``selection_trace.json`` and the coreset's samples.

One writer for every caller (`goracs select`, the pipeline's select stage, ``api.select``); the
coreset is always in rank order (rank 0 = chosen first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from goracs_ray.configutil import to_dict
from goracs_ray.io import atomic_dir, portable_path, write_json, write_parquet
from goracs_ray.select.config import SelectConfig
from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["checkpoint_dir_for", "coreset_samples", "coreset_table", "write_selection"]


def checkpoint_dir_for(out: Path) -> Path:
    """Where the selection checkpoint of output ``out`` lives: ``<out>.checkpoint`` next to it
    (outside ``out`` and its ``.part`` directory, so it survives a crash of the writer)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".part") + ".checkpoint")


def coreset_table(selection: Selection) -> pa.Table:
    """``(sample_id, rank int64, class int64|null)`` rows of ``selection``, in rank order."""
    classes = selection.classes
    return pa.table(
        {
            "sample_id": pa.array(selection.ids),
            "rank": pa.array(np.arange(selection.size, dtype=np.int64)),
            "class": pa.array(
                [None] * selection.size if classes is None else classes, type=pa.int64()
            ),
        }
    )


def coreset_samples(samples: pa.Table, ids: np.ndarray | list[Any]) -> pa.Table:
    """The rows of ``samples`` (SAMPLE_SCHEMA or any table with ``sample_id``) whose id is in
    ``ids`` (shape (n,)), in the order of ``ids`` (rank order for a coreset).

    Raises
    ------
    ValueError
        An id of ``ids`` is not in ``samples`` (the samples do not match the features).
    """
    ids = list(np.asarray(ids).tolist())
    order = {sid: rank for rank, sid in enumerate(ids)}
    keep = samples.filter(pc.is_in(samples.column("sample_id"), pa.array(ids)))
    if keep.num_rows != len(order):
        found = set(keep.column("sample_id").to_pylist())
        missing = [sid for sid in ids if sid not in found][:5]
        raise ValueError(
            f"{len(order) - len(found)} selected sample ids are not in the samples (e.g. "
            f"{missing}); the samples must be the ones the features were computed from"
        )
    ranks = np.array([order[s] for s in keep.column("sample_id").to_pylist()], dtype=np.int64)
    return keep.take(pa.array(np.argsort(ranks, kind="stable")))


def write_selection(
    out: Path,
    selection: Selection,
    features: FeatureTable,
    cfg: SelectConfig,
    *,
    seconds: float,
    inputs: dict[str, Any],
    overwrite: bool = False,
    samples: pa.Table | None = None,
) -> Path:
    """Write ``coreset.parquet`` (id, rank, class) and ``selection_trace.json`` atomically, plus
    ``coreset_samples.parquet`` (the selected rows of ``samples``, rank order) when given."""
    trace = {
        "method": selection.method,
        "budget": selection.size,
        "n_train": features.n_train,
        "n_valid": features.n_valid,
        "dim": int(features.train_emb.shape[1]),
        "seconds": seconds,
        # relative to `out`: a moved run directory keeps its references
        "inputs": {k: portable_path(v, out) for k, v in inputs.items()},
        "config": to_dict(cfg),
        "info": selection.info,
    }
    chosen = None if samples is None else coreset_samples(samples, selection.ids)
    with atomic_dir(out, overwrite=overwrite) as part:
        write_parquet(part / "coreset.parquet", coreset_table(selection))
        write_json(part / "selection_trace.json", trace)
        if chosen is not None:
            write_parquet(part / "coreset_samples.parquet", chosen)
    return out
