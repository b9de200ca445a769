"""`evaluate`: test-set metrics of a (LoRA-adapted) causal LM, written to ``metrics.json``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from goracs_ray.data.prompts import format_prompt
from goracs_ray.data.samples import seqrec_output
from goracs_ray.data.schema import Task
from goracs_ray.evaluate.config import EvalConfig, SeqRecRanking
from goracs_ray.evaluate.grounding import (
    base_model,
    candidate_distances,
    catalog_embeddings,
    last_token_hidden,
)
from goracs_ray.evaluate.likelihood import candidate_scores
from goracs_ray.evaluate.metrics import auc, log_loss, rank_of_target, ranking_metrics
from goracs_ray.evaluate.model_eval import generate_titles, yes_probabilities
from goracs_ray.io import check_output, portable_path, write_json, write_parquet
from goracs_ray.models.config import AUTO, ModelConfig, as_model_config

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


def _table(data: Any, name: str, columns: tuple[str, ...]) -> pa.Table:
    """Parquet path, pyarrow Table, pandas DataFrame or Ray Dataset → pyarrow Table."""
    where = f"`{name}`"
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).exists():
            raise FileNotFoundError(f"`{name}` Parquet `{data}` does not exist")
        where = f"`{name}` `{data}`"
        try:
            table = pq.read_table(data)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{where} is not a readable Parquet file ({exc})") from None
    elif isinstance(data, pa.Table):
        table = data
    elif hasattr(data, "to_pandas"):
        table = pa.Table.from_pandas(data.to_pandas(), preserve_index=False)
    else:
        raise TypeError(f"`{name}` must be a Parquet path, pyarrow Table or DataFrame/Dataset")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{where} lacks column(s) {', '.join(f'`{c}`' for c in missing)}")
    return table


def _candidates(samples: pa.Table, items: pa.Table) -> np.ndarray:
    """(B, 1 + n_neg) int64 catalog rows: the target, then the stored negatives."""
    index = {item: i for i, item in enumerate(items.column("item_id").to_pylist())}
    rows = []
    ids = samples.column("sample_id").to_pylist()
    negs_all = samples.column("negatives").to_pylist()
    for sid, target, negs in zip(ids, samples.column("target_item").to_pylist(), negs_all):
        if not negs:
            raise ValueError(f"sample `{sid}` has empty `negatives`; SeqRec needs stored negatives")
        if len(negs) != len(negs_all[0]):
            raise ValueError(f"sample `{sid}` has {len(negs)} negatives, others {len(negs_all[0])}")
        unknown = [i for i in [target, *negs] if i not in index]
        if unknown:
            raise ValueError(f"sample `{sid}`: item id(s) {unknown[:3]} are not in `items`")
        rows.append([index[target]] + [index[n] for n in negs])
    return np.asarray(rows, dtype=np.int64)


def _seqrec(
    cfg: EvalConfig, model, tokenizer, samples: pa.Table, items: pa.Table, model_key: str
) -> tuple[dict[str, float], pa.Table]:
    """SeqRec metrics and per-sample predictions for the rankings in ``cfg.seqrec_ranking``.

    Likelihood: each candidate title (target first, then the negatives) is scored by
    :func:`candidate_scores`; rank = #negatives scoring ≥ the target (ties pessimistic).
    Grounding (BIGRec): beam-search titles, embedded by the base model, L2 to each candidate.

    Returns
    -------
    metrics : dict
        Likelihood: ``ndcg@K``, ``hr@K``, ``mean_rank``, ``test_loss`` (mean target NLL per token);
        grounding: ``grounded_ndcg@K``, ``grounded_hr@K``, ``grounded_mean_rank``.
    predictions : pa.Table
        ``sample_id`` (string); likelihood ``rank`` (int64, 0-based) and ``target_loss``
        (float64); grounding ``grounded_rank`` (int64) and ``generated`` (string, best beam).
    """
    cand = _candidates(samples, items)
    likelihood = SeqRecRanking.LIKELIHOOD.value in cfg.seqrec_ranking
    grounding = SeqRecRanking.GROUNDING.value in cfg.seqrec_ranking
    titles = items.column("title").to_pylist()
    if grounding:
        item_emb = catalog_embeddings(
            model,
            tokenizer,
            titles,
            model_key=model_key,
            batch_size=cfg.embed_batch_size,
            cache_dir=cfg.cache_dir,
        )
    prompts = [
        format_prompt(i, x)
        for i, x in zip(
            samples.column("instruction").to_pylist(), samples.column("input").to_pylist()
        )
    ]
    answers = [seqrec_output(t) for t in titles]
    scores, ranks, generated = [], [], []
    for s in tqdm(range(0, len(prompts), cfg.batch_size), desc="evaluate seqrec", disable=None):
        batch = prompts[s : s + cfg.batch_size]
        rows = cand[s : s + len(batch)]
        if likelihood:
            scores.append(
                candidate_scores(
                    model,
                    tokenizer,
                    batch,
                    [[answers[j] for j in row] for row in rows],
                    max_length=cfg.max_length,
                    candidate_batch=cfg.candidate_batch,
                )
            )
        if grounding:
            beams = generate_titles(
                model,
                tokenizer,
                batch,
                num_beams=cfg.num_beams,
                num_return_sequences=cfg.num_return_sequences,
                max_new_tokens=cfg.max_new_tokens,
                max_length=cfg.max_length,
            )
            flat = [t for ts in beams for t in ts]
            with base_model(model):
                emb = last_token_hidden(model, tokenizer, flat, batch_size=cfg.embed_batch_size)
            pred = emb.reshape(len(batch), cfg.num_return_sequences, -1)
            ranks.append(rank_of_target(candidate_distances(pred, item_emb, rows)))
            generated.extend(t[0] for t in beams)
    metrics: dict[str, float] = {}
    columns: dict[str, pa.Array] = {"sample_id": samples.column("sample_id")}
    if likelihood:
        score = np.concatenate(scores)
        rank = rank_of_target(-score)
        target_loss = -score[:, 0]
        metrics.update(ranking_metrics(rank, cfg.ks))
        metrics["mean_rank"] = float(rank.mean())
        metrics["test_loss"] = float(target_loss.mean())
        columns["rank"] = pa.array(rank, pa.int64())
        columns["target_loss"] = pa.array(target_loss, pa.float64())
    if grounding:
        rank = np.concatenate(ranks)
        metrics.update({f"grounded_{k}": v for k, v in ranking_metrics(rank, cfg.ks).items()})
        metrics["grounded_mean_rank"] = float(rank.mean())
        columns["grounded_rank"] = pa.array(rank, pa.int64())
        columns["generated"] = pa.array(generated, pa.string())
    return metrics, pa.table(columns)


def _ctr(cfg: EvalConfig, model, tokenizer, samples: pa.Table) -> tuple[dict[str, float], pa.Table]:
    prompts = [
        format_prompt(i, x)
        for i, x in zip(
            samples.column("instruction").to_pylist(), samples.column("input").to_pylist()
        )
    ]
    outputs = samples.column("output").to_pylist()
    labels = samples.column("label").to_numpy(zero_copy_only=False)
    if np.isnan(labels.astype(np.float64)).any():
        raise ValueError("`test_samples` has null `label`s; CTR samples need label 0/1")
    labels = labels.astype(np.int64)
    probs = np.concatenate(
        [
            yes_probabilities(
                model,
                tokenizer,
                prompts[s : s + cfg.batch_size],
                outputs[s : s + cfg.batch_size],
                max_length=cfg.max_length,
            )
            for s in tqdm(range(0, len(prompts), cfg.batch_size), desc="evaluate ctr", disable=None)
        ]
    )
    metrics = {
        "auc": auc(labels, probs),
        "log_loss": log_loss(labels, probs),
        "accuracy": float(((probs > 0.5) == labels).mean()),
    }
    return metrics, pa.table(
        {"sample_id": samples.column("sample_id"), "p_yes": probs, "label": labels}
    )


def _model_key(model_path: Path) -> str:
    weights = sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin"))
    stamp = [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    return "|".join([str(model_path.resolve()), *stamp])


def evaluate(
    cfg: EvalConfig,
    *,
    model: ModelConfig | str | os.PathLike[str],
    adapter_path: str | os.PathLike[str] | None,
    test_samples: Any,
    items: Any,
    out_dir: str | os.PathLike[str],
    task: Task | str | None = None,
) -> dict[str, Any]:
    """Evaluate a base model + LoRA adapter on test samples; writes ``out_dir/metrics.json``.

    Parameters
    ----------
    cfg : EvalConfig
    model : ModelConfig or path
        The base model (``path``: a HF causal-LM dir; it also embeds the titles for grounding,
        adapter disabled), its ``device`` and ``dtype``. A path stands for
        ``ModelConfig(path=...)``.
    adapter_path : path or None
        peft adapter dir from `goracs_ray.train.finetune` (None: the base model alone).
    test_samples : path, pyarrow Table, DataFrame or Ray Dataset
        SAMPLE_SCHEMA rows; SeqRec needs ``target_item`` and ``negatives``, CTR ``label``.
    items : path, pyarrow Table or DataFrame
        ITEM_SCHEMA catalog (``item_id``, ``title``); SeqRec only (may be None for CTR).
    out_dir : path
        Receives ``metrics.json`` and ``predictions.parquet``, each written atomically. SeqRec
        predictions: ``sample_id``; with likelihood ranking ``rank`` (int64, 0-based) and
        ``target_loss`` (float64); with grounding ``grounded_rank`` (int64) and ``generated``
        (best beam's title). CTR: ``sample_id``, ``p_yes``, ``label``.
    task : Task, optional
        Default: the samples' ``task`` column.

    Returns
    -------
    dict
        ``task``, ``n``, timing, and for SeqRec (``cfg.seqrec_ranking``) the likelihood
        ranking's ``ndcg@K``/``hr@K``/``mean_rank``/``test_loss`` and the BIGRec grounding's
        ``grounded_ndcg@K``/``grounded_hr@K``/``grounded_mean_rank``; for CTR
        ``auc``/``log_loss``/``accuracy``.
    """
    import torch

    from goracs_ray.models.lm import load_causal_lm

    model_cfg = as_model_config(model)  # the model and the output first: cheap, and before work
    model_path = model_cfg.resolved_path
    given = [p for p in (test_samples, items) if isinstance(p, (str, os.PathLike))]
    check_output(out_dir, [*given, model_path, adapter_path], overwrite=True, flag="out_dir")
    base = ("sample_id", "instruction", "input", "output")
    samples = _table(test_samples, "test_samples", base)
    if task is None:
        found = set(samples.column("task").to_pylist()) if "task" in samples.column_names else set()
        if len(found) != 1:
            raise ValueError(f"`test_samples` task column holds {sorted(found)}; pass `task`")
        task = found.pop()
    task = Task(task)
    extra = ("target_item", "negatives") if task is Task.SEQREC else ("label",)
    samples = _table(samples, "test_samples", base + extra)
    if cfg.max_samples is not None:
        samples = samples.slice(0, cfg.max_samples)
    if samples.num_rows == 0:
        raise ValueError("`test_samples` is empty")
    on_gpu = model_cfg.wants_gpu(torch.cuda.is_available())
    device = ("cuda" if model_cfg.device == AUTO else model_cfg.device) if on_gpu else "cpu"
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(
        model_path,
        adapter_path=adapter_path,
        trainable=None,
        dtype=getattr(torch, model_cfg.dtype),
        attn_implementation="sdpa",
    )
    model.to(device)
    if task is Task.SEQREC:
        catalog = _table(items, "items", ("item_id", "title"))
        metrics, preds = _seqrec(cfg, model, tokenizer, samples, catalog, _model_key(model_path))
    else:
        metrics, preds = _ctr(cfg, model, tokenizer, samples)
    result = {
        "task": task.value,
        "n": samples.num_rows,
        **metrics,
        "adapter_path": portable_path(adapter_path, out_dir),  # relative to out_dir
        "seconds": time.perf_counter() - t0,
    }
    out = Path(out_dir)
    write_parquet(out / "predictions.parquet", preds)
    write_json(out / "metrics.json", result)
    logger.info(
        "evaluation (%s, n=%d): %s",
        task.value,
        samples.num_rows,
        {k: round(v, 4) for k, v in metrics.items()},
    )
    return result
