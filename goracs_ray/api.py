"""Stage functions for embedding goracs_ray in a larger Ray pipeline (no CLI, no run dir).

Each takes and returns paths or Ray Datasets, so one stage can be dropped into an existing
``ray.data`` pipeline::

    from goracs_ray import api
    model = ModelConfig(path="/models/llama-7b", lora=LoraSettings(r=8))  # one, for every stage
    samples_dir = api.prepare(DataConfig(...), "out")                   # → Path
    api.compute_features(FeaturesConfig(), samples_dir, "feat", model=model)
    coreset_ds = api.select(ray.data.read_parquet("feat"), SelectConfig(budget=1024),
                            samples=ray.data.read_parquet(samples_dir / "train.parquet"))
    adapter = api.finetune(TrainConfig(), model=model, train_samples=coreset_ds,
                           valid_samples=..., out_dir="ft", task="seqrec")
    metrics = api.evaluate(EvalConfig(), model=model, adapter_path=adapter, ...)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from goracs_ray.data.prepare import prepare
from goracs_ray.evaluate import evaluate
from goracs_ray.features import compute_features
from goracs_ray.select.config import SelectConfig, run_select
from goracs_ray.select.inputs import features_from_arrow, load_feature_table
from goracs_ray.select.output import coreset_samples, coreset_table
from goracs_ray.select.types import Selection
from goracs_ray.train import finetune

__all__ = ["compute_features", "evaluate", "finetune", "prepare", "select", "select_table"]


def select_table(
    features: str | os.PathLike[str], cfg: SelectConfig, *, label_column: str | None = None
) -> Selection:
    """Select from a features Parquet file/dir (``FEATURE_COLUMNS``); no Ray involved."""
    return run_select(cfg, load_feature_table(features, label_column=label_column))


def select(features: Any, cfg: SelectConfig, *, samples: Any = None, label_column=None) -> Any:
    """Select a coreset from a features Ray Dataset (or path); return it as a Ray Dataset.

    Parameters
    ----------
    features : ray.data.Dataset or path
        Rows with sample_id, split ("train" pool, "valid" target), embedding, grad_norm.
    cfg : SelectConfig
        Method, budget and options.
    samples : ray.data.Dataset or path, optional
        Training samples (SAMPLE_SCHEMA). When given, the selected samples themselves are
        returned in rank order (ready for :func:`finetune`), else rows of (sample_id, rank).
    label_column : str, optional
        Column of ``features`` holding class labels, for label-enhanced selection.

    Memory: the features are materialised once on the driver (N·d + M·d float32), and so is
    the coreset's rows of ``samples``. Both travel through the object store (never a temporary
    directory), so the Datasets' blocks may live on any node of a multi-node cluster.

    Raises
    ------
    ValueError
        A selected id is missing from ``samples`` (samples and features do not match).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    if isinstance(features, (str, os.PathLike)):
        selection = select_table(features, cfg, label_column=label_column)
    else:
        # Not `write_parquet` to a temporary directory: on a multi-node cluster each block would
        # land on the disk of the node that wrote it, where the driver cannot read it.
        table = _gather(features, "features")
        selection = run_select(cfg, features_from_arrow(table, label_column=label_column))
    if samples is None:
        return ray.data.from_arrow(coreset_table(selection).select(["sample_id", "rank"]))
    if isinstance(samples, (str, os.PathLike)):
        table = pq.read_table(Path(samples))
    else:
        wanted = pa.array(selection.ids)

        def keep(batch: pa.Table) -> pa.Table:
            return batch.filter(pc.is_in(batch.column("sample_id"), wanted))

        # The coreset (budget rows) is gathered on the driver to put it in rank order.
        table = _gather(samples.map_batches(keep, batch_format="pyarrow"), "samples")
    return ray.data.from_arrow(coreset_samples(table, selection.ids))


def _gather(ds: Any, name: str):
    """A Ray Dataset's blocks as one Arrow table on the driver, fetched through the object
    store from whichever nodes hold them."""
    import pyarrow as pa
    import ray

    tables = ray.get(ds.to_arrow_refs())
    if not tables:
        raise ValueError(f"the `{name}` Ray Dataset has no blocks")
    return pa.concat_tables(tables, promote_options="default")
