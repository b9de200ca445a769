"""End-to-end run: prepare → model → features → select → finetune → evaluate → report.

Each stage is cached by content (see :mod:`goracs_ray.stages`): re-running the same config is a
no-op, changing ``select.lam`` re-runs only selection, fine-tuning and evaluation. The run directory
is self-describing: ``config.yaml`` (replayable with ``goracs run <run_dir>/config.yaml``),
``manifest.json`` (config hash, stage keys and timings, package versions, seeds) and ``report.md``.

Layout of ``run_dir``::

    prepare/samples/{train,valid,test,items}.parquet, dataset_card.json
    model/                      tiny HF model (only when ``model.path`` is not given)
    features/                   features Parquet shards + manifest
    select/<method>/            coreset.parquet, coreset_samples.parquet, selection_trace.json
    finetune/<method>/adapter/  peft adapter
    evaluate/<method>/          metrics.json
    config.yaml  manifest.json  report.md  poo.png  metrics.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from goracs_ray.config import RunConfig
from goracs_ray.configutil import to_dict
from goracs_ray.io import atomic_file, read_json, write_json, write_parquet
from goracs_ray.report import ArmResult, write_report
from goracs_ray.select.config import SelectConfig
from goracs_ray.stages import StageGraph, StageRecord, stage_key

__all__ = ["RunResult", "run_pipeline", "select_stage"]

logger = logging.getLogger(__name__)

_PACKAGES = ("goracs_ray", "torch", "ray", "transformers", "peft", "deepspeed", "pot", "numpy")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` produced."""

    run_dir: Path
    """The run directory."""
    arms: list[ArmResult]
    """One entry per selection method: metrics and stage timings."""
    stages: list[StageRecord]
    """Every stage invocation, cached or not, in order."""


def select_stage(cfg, features_dir: Path, samples_dir: Path, out_dir: Path, *, use_labels: bool):
    """Select a coreset from a features dir; write coreset + its samples into ``out_dir``.

    Writes ``coreset.parquet`` (sample_id, rank, class), ``selection_trace.json`` and
    ``coreset_samples.parquet`` (the selected training samples in SAMPLE_SCHEMA, in rank order,
    ready for any fine-tuning tool).
    """
    from goracs_ray.select.cli import write_selection
    from goracs_ray.select.config import run_select
    from goracs_ray.select.inputs import load_feature_table

    table = load_feature_table(
        features_dir, samples_dir=samples_dir, label_column="label" if use_labels else None
    )
    start = time.perf_counter()
    selection = run_select(cfg, table, progress=None)
    seconds = time.perf_counter() - start
    write_selection(
        out_dir,
        selection,
        table,
        cfg,
        seconds=seconds,
        inputs={"features": features_dir, "samples": samples_dir},
        overwrite=True,
    )
    train = pq.read_table(samples_dir / "train.parquet")
    order = {sid: rank for rank, sid in enumerate(selection.ids.tolist())}
    keep = train.filter(pc.is_in(train.column("sample_id"), pa.array(list(order))))
    ranks = np.array([order[s] for s in keep.column("sample_id").to_pylist()])
    write_parquet(out_dir / "coreset_samples.parquet", keep.take(np.argsort(ranks)))
    return selection


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_sha() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return res.stdout.strip()


def _build_model(cfg: RunConfig, samples_dir: Path, out: Path) -> None:
    from goracs_ray.data.prompts import format_full_text
    from goracs_ray.models.tiny import build_tiny_llm

    items = pq.read_table(samples_dir / "items.parquet", columns=["title"])
    train = pq.read_table(samples_dir / "train.parquet", columns=["instruction", "input", "output"])
    rows = train.slice(0, min(train.num_rows, 20_000)).to_pylist()
    texts = items.column("title").to_pylist() + [
        format_full_text(r["instruction"], r["input"], r["output"]) for r in rows
    ]
    build_tiny_llm(texts, out, seed=cfg.model.seed, overwrite=True, **to_dict(cfg.model.tiny))


def _select_config(cfg: RunConfig, method: str) -> tuple[SelectConfig, dict[str, Any]]:
    """The selection config of one method and what its coreset depends on (its cache key).

    ``select.options`` belong to the main method; worker counts and the like change no coreset,
    so e.g. a new ``select.lam`` leaves the baselines cached.
    """
    select_cfg = dataclasses.replace(cfg.select, method=method)
    if method != cfg.select.method:
        select_cfg = dataclasses.replace(select_cfg, options={})
    what = {
        "budget": select_cfg.budget,
        "seed": select_cfg.seed,
        "options": select_cfg.method_options(),
    }
    return select_cfg, what


def run_pipeline(cfg: RunConfig, *, force: bool = False) -> RunResult:
    """Run every stage of ``cfg`` (cached by content); returns metrics per selection method."""
    from goracs_ray.data.prepare import prepare
    from goracs_ray.evaluate import evaluate
    from goracs_ray.features import compute_features
    from goracs_ray.raycluster import ensure_ray
    from goracs_ray.train import finetune

    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, run_dir)
    ensure_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
    graph = StageGraph(run_dir, force=force)
    started = time.perf_counter()
    task = cfg.data.task

    data = graph.run("prepare", cfg.data, [], lambda d: prepare(cfg.data, d, force=True))
    samples_dir = run_dir / "prepare" / "samples"
    if cfg.model.path is not None:
        model_path, model_key = Path(cfg.model.path), stage_key("model", str(cfg.model.path))
    else:
        model_path = run_dir / "model"
        model_key = graph.run(
            "model", cfg.model, [data.key], lambda d: _build_model(cfg, samples_dir, d)
        ).key
    features_cfg = dataclasses.replace(cfg.features, model_path=model_path, task=task)
    features_dir = run_dir / "features"
    features = graph.run(
        "features",
        features_cfg,
        [data.key, model_key],
        lambda d: compute_features(features_cfg, samples_dir, d, progress=None),
        atomic=False,
    )

    use_labels = task.value == "ctr"
    # Checkpoints outside the stage's temporary dir, so a crashed driver resumes training.
    train_cfg = cfg.train
    if train_cfg.storage_path is None:
        train_cfg = dataclasses.replace(train_cfg, storage_path=str(run_dir / "ray_train"))
    arms = []
    for method in cfg.methods:
        select_cfg, what = _select_config(cfg, method)
        sel_dir = run_dir / "select" / method
        ft_dir = run_dir / "finetune" / method
        sel = graph.run(
            f"select/{method}",
            what,
            [features.key],
            lambda d, c=select_cfg: select_stage(
                c, features_dir, samples_dir, d, use_labels=use_labels
            ),
        )
        ft = graph.run(
            f"finetune/{method}",
            train_cfg,
            [sel.key, model_key],
            lambda d, s=sel_dir: finetune(
                train_cfg,
                model_path=model_path,
                train_samples=s / "coreset_samples.parquet",
                valid_samples=samples_dir / "valid.parquet",
                out_dir=d,
                task=task,
            ),
        )
        ev = graph.run(
            f"evaluate/{method}",
            cfg.eval,
            [ft.key],
            lambda d, f=ft_dir: evaluate(
                cfg.eval,
                model_path=model_path,
                adapter_path=f / "adapter",
                test_samples=samples_dir / "test.parquet",
                items=samples_dir / "items.parquet",
                out_dir=d,
                task=task,
            ),
        )
        arms.append(_arm_result(method, cfg, sel_dir, run_dir / "evaluate" / method, sel, ft, ev))

    _write_manifest(cfg, run_dir, graph.records, time.perf_counter() - started)
    write_report(
        run_dir,
        arms,
        title=f"goracs_ray run: {run_dir.name}",
        notes=_report_notes(cfg, samples_dir),
    )
    return RunResult(run_dir=run_dir, arms=arms, stages=graph.records)


_NOT_METRICS = {"n", "seconds", "task", "adapter_path"}


def _arm_result(method, cfg, sel_dir, ev_dir, *recs: StageRecord) -> ArmResult:
    trace = read_json(sel_dir / "selection_trace.json")
    metrics = read_json(ev_dir / "metrics.json")
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float))
    }
    parts = trace.get("info", {}).get("parts", [])
    return ArmResult(
        method=method,
        budget=int(trace["budget"]),
        seed=cfg.select.seed,
        metrics=numeric,
        seconds={
            "select": float(trace["seconds"]),
            "finetune": _stage_seconds(Path(recs[1].out_dir)),
            "evaluate": _stage_seconds(Path(recs[2].out_dir)),
        },
        # One trace per class part (label-enhanced); the report plots the single-part case.
        poo_trace=parts[0]["poo_trace"] if len(parts) == 1 else [],
    )


def _stage_seconds(out_dir: Path) -> float:
    return float(read_json(out_dir / "_stage.json")["seconds"])


def _report_notes(cfg: RunConfig, samples_dir: Path) -> list[str]:
    card = read_json(samples_dir / "dataset_card.json")
    counts = ", ".join(f"{k} {v['samples']}" for k, v in card["splits"].items())
    model = cfg.model.path or f"tiny LLaMA ({to_dict(cfg.model.tiny)})"
    source = cfg.data.source.kind.value
    return [
        f"- task: `{cfg.data.task.value}`, source: `{source}`; samples: {counts}",
        f"- model: {model}",
        f"- budget: {cfg.select.budget}, λ = {cfg.select.lam}, methods: {', '.join(cfg.methods)}",
    ]


def _config_hash(cfg: RunConfig) -> str:
    payload = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write_config(cfg: RunConfig, run_dir: Path) -> None:
    with atomic_file(run_dir / "config.yaml") as part:
        part.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _write_manifest(cfg: RunConfig, run_dir: Path, records, seconds: float) -> None:
    manifest: dict[str, Any] = {
        "config_hash": _config_hash(cfg),
        "config": to_dict(cfg),
        "git_sha": _git_sha(),
        "versions": _versions(),
        "host": platform.node(),
        "seeds": {
            "data": cfg.data.seed,
            "model": cfg.model.seed,
            "select": cfg.select.seed,
            "train": cfg.train.seed,
        },
        "seconds_total": seconds,
        "stages": [dataclasses.asdict(r) for r in records],
    }
    write_json(run_dir / "manifest.json", manifest)
