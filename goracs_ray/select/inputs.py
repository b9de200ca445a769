"""Read selection inputs (`.npy` or Parquet features) into a validated :class:`FeatureTable`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from goracs_ray.data.schema import FEATURES_MANIFEST
from goracs_ray.select.types import FeatureTable

__all__ = ["features_from_arrow", "load_feature_table", "load_split_features"]


_LEGACY_MANIFEST = "manifest.json"  # features dirs written before the rename


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        # Like Spark/Hive: files starting with "_" or "." are metadata, not data.
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith(("_", ".")))
        if not files:
            raise FileNotFoundError(f"`{path}` contains no *.parquet files")
        _check_features_manifest(path, files)
        return files
    if not path.is_file():
        raise FileNotFoundError(f"`{path}` does not exist")
    return [path]


def _check_features_manifest(path: Path, files: list[Path]) -> None:
    """Refuse a `goracs features` dir that is incomplete or does not match its manifest.

    A dir with ``_run.json`` (a features run started there) but no manifest did not finish; a
    manifest whose shard list or row count differs from the files found is stale. Directories of
    other Parquet files (no ``_run.json``, no manifest) are read as they are.
    """
    import json

    manifest_file = next(
        (path / n for n in (FEATURES_MANIFEST, _LEGACY_MANIFEST) if (path / n).is_file()), None
    )
    if manifest_file is None:
        if (path / "_run.json").is_file():
            raise ValueError(
                f"`{path}` is an unfinished features run (no {FEATURES_MANIFEST}); rerun "
                "`goracs features` with the same --out to resume it"
            )
        return
    try:
        manifest = json.loads(manifest_file.read_text())
        shards, n_rows = list(manifest["shards"]), int(manifest["n_rows"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"`{manifest_file}` is not a features manifest ({exc}); recompute the features "
            "(`goracs features --overwrite`)"
        ) from None
    found = [f.name for f in files]
    missing = sorted(set(shards) - set(found))
    extra = sorted(set(found) - set(shards))
    if missing or extra:
        raise ValueError(
            f"`{path}` does not match its {manifest_file.name}: missing shard(s) {missing[:5]}, "
            f"unlisted file(s) {extra[:5]}; rerun `goracs features` with the same --out to "
            "recompute the missing shards, or remove the unlisted files"
        )
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    if rows != n_rows:
        raise ValueError(
            f"`{path}` holds {rows} rows but its {manifest_file.name} lists {n_rows}; recompute "
            "the features (`goracs features --overwrite`)"
        )


def _schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"`{file}` is not a readable Parquet file ({exc})") from None


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    tables = []
    for file in _parquet_files(path):
        schema = _schema(file)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(
                f"`{file}` lacks column(s) {', '.join(f'`{c}`' for c in missing)}; "
                f"it has {', '.join(schema.names)}"
            )
        try:
            tables.append(pq.read_table(file, columns=columns))
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"`{file}` is not a readable Parquet file ({exc})") from None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _load_npy(path: Path) -> np.ndarray:
    """A numeric .npy array, or one error naming the file (empty, truncated, pickled, text)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (EOFError, ValueError, OSError) as exc:
        raise ValueError(
            f"`{path}` is not a readable .npy array ({type(exc).__name__}: {exc}); write it with "
            "numpy.save"
        ) from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"`{path}` must hold a numeric array, got dtype {arr.dtype}")
    return arr


def _vectors(table: pa.Table, column: str, where: str) -> np.ndarray:
    """A list/fixed-size-list column as an (n, d) float32 array."""
    col = table.column(column).combine_chunks()
    if isinstance(col.type, pa.ExtensionType):  # e.g. Ray Data's tensor column of numpy batches
        col = col.storage
    kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if not any(is_kind(col.type) for is_kind in kinds):
        raise TypeError(f"column `{column}` of `{where}` must hold vectors, got {col.type}")
    if col.null_count:
        raise ValueError(f"column `{column}` of `{where}` has {col.null_count} null vector(s)")
    lengths = np.asarray(pc.list_value_length(col))
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"column `{column}` of `{where}` has vectors of different lengths")
    dim = int(lengths[0]) if len(lengths) else 0
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(col), dim)


def _scalars(table: pa.Table, column: str, where: str, dtype: type) -> np.ndarray:
    col = table.column(column)
    if col.null_count:
        raise ValueError(f"column `{column}` of `{where}` has {col.null_count} null value(s)")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise TypeError(f"column `{column}` of `{where}` must be numeric, got {col.type}")
    return np.asarray(col.to_numpy(), dtype=dtype)


def _read_split(
    path: Path,
    *,
    id_column: str,
    embedding_column: str,
    grad_column: str | None,
    label_column: str | None,
) -> dict[str, np.ndarray | None]:
    if path.suffix == ".npy":
        if label_column:
            raise ValueError(f"`--label-column` needs Parquet input, but `{path}` is .npy")
        if not path.is_file():
            raise FileNotFoundError(f"`{path}` does not exist")
        emb = _load_npy(path)
        return {"ids": np.arange(len(emb)), "emb": emb, "grad": None, "label": None}
    columns = [id_column, embedding_column] + [c for c in (grad_column, label_column) if c]
    table = _read_parquet(path, columns)
    where = str(path)
    return {
        "ids": table.column(id_column).to_numpy(zero_copy_only=False),
        "emb": _vectors(table, embedding_column, where),
        "grad": _scalars(table, grad_column, where, np.float32) if grad_column else None,
        "label": _scalars(table, label_column, where, np.int64) if label_column else None,
    }


def load_split_features(
    train: str | os.PathLike[str],
    valid: str | os.PathLike[str],
    *,
    grad_norms: str | os.PathLike[str] | None = None,
    id_column: str = "sample_id",
    embedding_column: str = "embedding",
    grad_column: str | None = "grad_norm",
    label_column: str | None = None,
) -> FeatureTable:
    """Train and valid features from separate `.npy` or Parquet files.

    `.npy` files hold the (n, d) embeddings (ids = row numbers); gradient norms then come from
    ``grad_norms`` (an (N,) `.npy`). Parquet files hold an id column, a vector column and, for
    the training file, ``grad_column`` (set it to None when absent).
    """
    train_path, valid_path = Path(train), Path(valid)
    npy = train_path.suffix == ".npy"
    tr = _read_split(
        train_path, id_column=id_column, embedding_column=embedding_column,
        grad_column=None if npy or grad_norms is not None else grad_column,
        label_column=label_column,
    )  # fmt: skip
    va = _read_split(
        valid_path, id_column=id_column, embedding_column=embedding_column, grad_column=None,
        label_column=label_column,
    )  # fmt: skip
    grads = tr["grad"]
    if grad_norms is not None:
        path = Path(grad_norms)
        if not path.is_file():
            raise FileNotFoundError(f"`{path}` (gradient norms) does not exist")
        grads = _load_npy(path)
    return FeatureTable(
        train_ids=tr["ids"],
        train_emb=tr["emb"],
        valid_emb=va["emb"],
        grad_norms=grads,
        train_labels=tr["label"],
        valid_labels=va["label"],
    )


def load_feature_table(
    path: str | os.PathLike[str],
    *,
    label_column: str | None = None,
    samples_dir: str | os.PathLike[str] | None = None,
) -> FeatureTable:
    """Features Parquet (a file or a directory of shards) with ``FEATURE_COLUMNS``.

    Rows with ``split == "train"`` form the pool, ``split == "valid"`` the validation set; other
    splits are ignored. Columns used: sample_id, split, embedding, grad_norm (+ ``label_column``),
    and ``grad_proj`` / ``loss`` when present (LESS / EL2N-style baselines).

    With ``samples_dir`` (``goracs prepare`` output), the training samples' ``user`` and
    ``target_item`` become ``train_groups`` (stratified and DEALRec baselines), and
    ``label_column`` is read from the samples when the features lack it.
    """
    names = set(_schema(_parquet_files(Path(path))[0]).names)
    columns = _feature_columns(names, label_column)
    table = _read_parquet(Path(path), columns)
    return _feature_table(table, str(path), label_column=label_column, samples_dir=samples_dir)


def features_from_arrow(
    table: pa.Table, *, label_column: str | None = None, where: str = "the features Dataset"
) -> FeatureTable:
    """:func:`load_feature_table` of an in-memory Arrow table (e.g. a Ray Dataset's blocks
    gathered on the driver); ``label_column`` must then be one of its columns."""
    need = ["sample_id", "split", "embedding", "grad_norm", *filter(None, [label_column])]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {', '.join(f'`{c}`' for c in missing)}; it has "
            f"{', '.join(table.column_names)}"
        )
    table = table.select(_feature_columns(set(table.column_names), label_column))
    return _feature_table(table, where, label_column=label_column, samples_dir=None)


def _feature_columns(names: set[str], label_column: str | None) -> list[str]:
    optional = [c for c in ("grad_proj", "loss") if c in names]
    from_features = [label_column] if label_column in names else []
    return ["sample_id", "split", "embedding", "grad_norm", *optional, *from_features]


def _feature_table(
    table: pa.Table, where: str, *, label_column: str | None, samples_dir
) -> FeatureTable:
    optional = [c for c in ("grad_proj", "loss") if c in table.column_names]
    from_features = label_column if label_column in table.column_names else None
    ids = table.column("sample_id")
    bad = ids.null_count + (
        pc.sum(pc.is_nan(ids)).as_py() or 0 if pa.types.is_floating(ids.type) else 0
    )
    if bad:
        raise ValueError(
            f"column `sample_id` of `{where}` has {bad} null/NaN id(s); give every sample an id"
        )
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False))
    rows = {name: np.flatnonzero(split == name) for name in ("train", "valid")}
    for name, idx in rows.items():
        if not len(idx):
            raise ValueError(f"`{where}` has no rows with split == {name!r}")
    train, valid = table.take(rows["train"]), table.take(rows["valid"])
    del table
    if label_column and not from_features:
        if samples_dir is None:
            raise ValueError(f"`{where}` lacks `{label_column}`; pass the samples dir as well")
        train = _join_samples(train, Path(samples_dir) / "train.parquet", [label_column])
        valid = _join_samples(valid, Path(samples_dir) / "valid.parquet", [label_column])
    groups = None
    if samples_dir is not None:
        train = _join_samples(train, Path(samples_dir) / "train.parquet", ["user", "target_item"])
        groups = {
            "user": train.column("user").to_numpy(zero_copy_only=False),
            "item": train.column("target_item").to_numpy(zero_copy_only=False),
        }
    return FeatureTable(
        train_ids=train.column("sample_id").to_numpy(zero_copy_only=False),
        train_emb=_vectors(train, "embedding", where),
        valid_emb=_vectors(valid, "embedding", where),
        grad_norms=_scalars(train, "grad_norm", where, np.float32),
        train_labels=_scalars(train, label_column, where, np.int64) if label_column else None,
        valid_labels=_scalars(valid, label_column, where, np.int64) if label_column else None,
        train_grad_proj=_vectors(train, "grad_proj", where) if "grad_proj" in optional else None,
        valid_grad_proj=_vectors(valid, "grad_proj", where) if "grad_proj" in optional else None,
        train_losses=_scalars(train, "loss", where, np.float32) if "loss" in optional else None,
        train_groups=groups,
    )


def _join_samples(features: pa.Table, samples_file: Path, columns: list[str]) -> pa.Table:
    """Append ``columns`` of the samples file to ``features``, matched by sample_id, in order."""
    samples = pq.read_table(samples_file, columns=["sample_id", *columns])
    index = pc.index_in(features.column("sample_id"), value_set=samples.column("sample_id"))
    if index.null_count:
        missing = features.column("sample_id").filter(pc.is_null(index))[:3].to_pylist()
        raise ValueError(
            f"features rows {missing} have no sample in `{samples_file}`; recompute the features "
            "from these samples"
        )
    picked = samples.take(index)
    for name in columns:
        features = features.append_column(name, picked.column(name))
    return features
