"""The one experiment runner: prepare → model → features, then arms of select → finetune → evaluate.

A run is a set of arms (:class:`Arm`: a selection method at a budget and seed, or the full training
split). `goracs run` is the one-arm-per-method case (``select.method`` plus ``compare``);
`goracs bench` (:mod:`goracs_ray.bench`) builds methods × budgets × seeds. Both run their arms
with :func:`run_arms` and report with :func:`goracs_ray.results.write_results`.

Each stage is cached by content (see :mod:`goracs_ray.stages`): re-running the same config is a
no-op, changing ``select.lam`` re-runs only selection, fine-tuning and evaluation. The run directory
is self-describing: ``config.yaml`` (replayable with ``goracs run <run_dir>/config.yaml``),
``manifest.json`` (config hash, stage keys and timings, package versions, seeds) and ``results.md``.

Layout of ``run_dir``::

    prepare/samples/{train,valid,test,early_stop,items}.parquet, dataset_card.json
    model/                      tiny HF model (only when ``model.path`` is not given)
    features/                   features Parquet shards + _manifest.json
    select/<method>/            coreset.parquet, coreset_samples.parquet, selection_trace.json
    finetune/<method>/adapter/  peft adapter
    evaluate/<method>/          metrics.json, predictions.parquet (per-sample values behind CIs)
    config.yaml  manifest.json  results.md  results.parquet  metric_vs_budget.png  time.png
    poo.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from goracs_ray.config import RunConfig
from goracs_ray.configutil import to_dict
from goracs_ray.data.config import DataConfig
from goracs_ray.io import atomic_file, read_json, write_json
from goracs_ray.models.config import ModelConfig, model_fingerprint
from goracs_ray.results import ArmResult, headline_metric, results_table, write_results
from goracs_ray.select.config import SelectConfig
from goracs_ray.stages import StageGraph, StageRecord, check_run_format, stage_key
from goracs_ray.storage import local_run_dir, open_mirror
from goracs_ray.train.config import TrainConfig

__all__ = [
    "Arm",
    "Inputs",
    "RunResult",
    "prepare_inputs",
    "run_arm",
    "run_arms",
    "config_hash",
    "git_sha",
    "run_pipeline",
    "select_stage",
    "selection_arm",
    "write_config",
    "write_manifest",
]

logger = logging.getLogger(__name__)

_PACKAGES = (
    "goracs_ray",
    "torch",
    "ray",
    "transformers",
    "peft",
    "deepspeed",
    "pot",
    "numpy",
    "mlflow-skinny",
)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` produced."""

    run_dir: Path
    """The run directory."""
    arms: list[ArmResult]
    """One entry per selection method: metrics and stage timings."""
    stages: list[StageRecord]
    """Every stage invocation, cached or not, in order."""
    results_md: Path | None = None
    """``results.md``: metrics with 95 % CIs, the paired comparison against random, plots."""


def select_stage(cfg, features_dir: Path, samples_dir: Path, out_dir: Path, *, use_labels: bool):
    """Select a coreset from a features dir; write coreset + its samples into ``out_dir``.

    Writes ``coreset.parquet`` (sample_id, rank, class), ``selection_trace.json`` and
    ``coreset_samples.parquet`` (the selected training samples in SAMPLE_SCHEMA, in rank order,
    ready for any fine-tuning tool).
    """
    from goracs_ray.select.config import run_select
    from goracs_ray.select.inputs import load_feature_table
    from goracs_ray.select.output import checkpoint_dir_for, write_selection

    table = load_feature_table(
        features_dir, samples_dir=samples_dir, label_column="label" if use_labels else None
    )
    start = time.perf_counter()
    ckpt = checkpoint_dir_for(out_dir)  # resumed after a crash, removed once written
    selection = run_select(cfg, table, progress=None, checkpoint_dir=ckpt)
    seconds = time.perf_counter() - start
    write_selection(
        out_dir,
        selection,
        table,
        cfg,
        seconds=seconds,
        inputs={"features": features_dir, "samples": samples_dir},
        overwrite=True,
        samples=pq.read_table(samples_dir / "train.parquet"),
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    return selection


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_sha() -> str | None:
    """The commit of the goracs_ray checkout (None when not run from a git checkout)."""
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


def _model_settings(model: ModelConfig, *names: str) -> dict[str, Any]:
    """The ``model`` fields ``names`` as a stage-key part (what a stage's result depends on)."""
    return {name: to_dict(getattr(model, name)) for name in names}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What every arm of a run reads: the prepared samples, the base model and the features."""

    samples_dir: Path
    """``prepare/samples`` ({train,valid,test,early_stop,items}.parquet)."""
    model: ModelConfig
    """``cfg.model`` with ``path`` set (the built tiny model unless the user gave one)."""
    features_dir: Path
    """The features stage's Parquet shards."""
    keys: dict[str, str | None]
    """Stage keys of ``prepare``, ``model`` and ``features`` (upstream of every arm), and the
    fingerprint of ``model.adapter_path`` (None without one)."""
    train_cfg: TrainConfig
    """``cfg.train`` with its Ray Train storage resolved under the run dir."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One select → finetune → evaluate chain of a run."""

    name: str
    """Label in reports (``goracs``, ``goracs_faithful``, ``full_data``)."""
    path: str
    """Stage directory under ``select/``, ``finetune/`` and ``evaluate/`` (e.g. ``goracs`` or
    ``goracs/b1024-s0``)."""
    select: SelectConfig | None
    """The selection; None fine-tunes on the whole training split (the full-data reference)."""
    select_key: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the coreset depends on (its cache key; worker counts and the like excluded)."""
    train_seed: int = 0
    """Seed of the fine-tuning (LoRA init, data order, dropout)."""
    max_epochs: int | None = None
    """Epoch cap of this arm's fine-tuning (None: ``train.epochs``); `goracs bench` sets it on
    the full-data arms from ``bench.full_data_epochs``."""


def selection_arm(
    name: str,
    path: str,
    base: SelectConfig,
    *,
    method: str,
    options: dict[str, Any],
    budget: int,
    seed: int,
    train_seed: int,
) -> Arm:
    """An arm selecting with ``method`` (``base`` gives the GORACS settings such as ``lam``).

    The cache key holds only what changes the coreset (budget, seed, the method's resolved
    options): worker counts and the like do not, and a new ``lam`` leaves the baselines cached.
    """
    select_cfg = dataclasses.replace(base, method=method, options=options, budget=budget, seed=seed)
    what = {"budget": budget, "seed": seed, "options": select_cfg.method_options()}
    return Arm(name, path, select_cfg, what, train_seed=train_seed)


def stop_split(data: DataConfig) -> str:
    """The samples file fine-tuning early-stops on: ``early_stop.parquet`` when
    ``data.early_stop_size`` sets one apart, else ``valid.parquet`` (the reference)."""
    return "early_stop.parquet" if data.early_stop_size else "valid.parquet"


def prepare_inputs(cfg: RunConfig, graph: StageGraph) -> Inputs:
    """Run the shared stages (prepare → model → features) of ``cfg`` in ``graph``."""
    from goracs_ray.data.prepare import input_key, prepare
    from goracs_ray.features import compute_features
    from goracs_ray.models.tiny import build_model

    run_dir = graph.run_dir
    samples_dir = run_dir / "prepare" / "samples"
    hashes = None if graph.dry_run else run_dir / ".fingerprints.json"  # file hashes, reused

    def prepare_samples(out: Path) -> None:
        prepare(cfg.data, out, force=True)

    # Keys hold contents, not paths: input files edited in place, or new weights at the same
    # model path, give new keys (and a moved run dir keeps its cache).
    data = graph.run("prepare", {"inputs": input_key(cfg.data)}, [], prepare_samples)
    if cfg.model.path is not None:
        model = dataclasses.replace(cfg.model, path=cfg.model.local_path)  # a Hub id: its snapshot
        weights = model_fingerprint(model.path, cache=hashes)
        model_key = stage_key("model", {"weights": weights})
    else:
        model = dataclasses.replace(cfg.model, path=run_dir / "model")

        def build_tiny_model(out: Path) -> None:
            build_model(cfg.model, samples_dir, out, overwrite=True)

        tiny_key = _model_settings(cfg.model, "tiny", "seed")
        model_key = graph.run("model", tiny_key, [data.key], build_tiny_model).key

    def featurise(out: Path) -> None:
        compute_features(
            cfg.features, samples_dir, out, model=model, task=cfg.data.task, progress=None
        )

    features_dir = run_dir / "features"
    adapter = cfg.model.adapter_path
    features_key = {
        "features": cfg.features,
        "task": cfg.data.task,
        "model": _model_settings(cfg.model, "lora", "dtype"),
        "adapter": adapter and model_fingerprint(adapter, cache=hashes),
    }
    features = graph.run("features", features_key, [data.key, model_key], featurise, atomic=False)
    # Checkpoints outside the stage's temporary dir, so a crashed driver resumes training.
    train_cfg = cfg.train
    if train_cfg.storage_path is None:
        train_cfg = dataclasses.replace(train_cfg, storage_path=str(run_dir / "ray_train"))
    keys = {
        "prepare": data.key,
        "model": model_key,
        "features": features.key,
        "adapter": features_key["adapter"],
    }
    return Inputs(samples_dir, model, features_dir, keys, train_cfg)


def run_arm(graph: StageGraph, cfg: RunConfig, inputs: Inputs, arm: Arm) -> ArmResult | None:
    """Select (unless full data) → fine-tune → evaluate one arm; each stage cached by content."""
    from goracs_ray.evaluate import evaluate
    from goracs_ray.train import finetune

    task, samples_dir = cfg.data.task, inputs.samples_dir
    train_cfg = dataclasses.replace(inputs.train_cfg, seed=arm.train_seed)
    if arm.max_epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=min(train_cfg.epochs, arm.max_epochs))
    sel_dir = graph.run_dir / "select" / arm.path
    if arm.select is not None:
        select_cfg = arm.select

        def select_coreset(out: Path) -> None:
            select_stage(
                select_cfg, inputs.features_dir, samples_dir, out, use_labels=task.value == "ctr"
            )

        sel = graph.run(
            f"select/{arm.path}", arm.select_key, [inputs.keys["features"]], select_coreset
        )
        train_samples, upstream = sel_dir / "coreset_samples.parquet", sel.key
    else:
        train_samples, upstream = samples_dir / "train.parquet", inputs.keys["prepare"]
    ft_dir = graph.run_dir / "finetune" / arm.path

    def fine_tune(out: Path) -> None:
        finetune(
            train_cfg,
            model=inputs.model,
            train_samples=train_samples,
            valid_samples=samples_dir / stop_split(cfg.data),
            out_dir=out,
            task=task,
        )

    # The key leaves out where checkpoints are stored (a moved run dir stays cached).
    finetune_key = {
        "train": dataclasses.replace(train_cfg, storage_path=None),
        "model": _model_settings(inputs.model, "lora", "deepspeed"),
        "adapter": inputs.keys["adapter"],
    }
    ft = graph.run(
        f"finetune/{arm.path}", finetune_key, [upstream, inputs.keys["model"]], fine_tune
    )
    ev_dir = graph.run_dir / "evaluate" / arm.path

    def evaluate_adapter(out: Path) -> None:
        evaluate(
            cfg.eval,
            model=inputs.model,
            adapter_path=ft_dir / "adapter",
            test_samples=samples_dir / "test.parquet",
            items=samples_dir / "items.parquet",
            out_dir=out,
            task=task,
        )

    eval_key = {"eval": cfg.eval, "model": _model_settings(inputs.model, "dtype")}
    graph.run(f"evaluate/{arm.path}", eval_key, [ft.key], evaluate_adapter)
    if graph.dry_run:
        return None
    return _arm_result(arm, ft_dir, ev_dir, sel_dir)


def run_arms(
    graph: StageGraph,
    cfg: RunConfig,
    inputs: Inputs,
    arms: Sequence[Arm],
    *,
    parallel: int = 1,
    progress: bool | None = None,
    on_result: Callable[[Arm, ArmResult], None] | None = None,
) -> list[ArmResult]:
    """Run ``arms`` (:func:`run_arm` each, every stage cached), ``parallel`` at a time.

    Results come back in the order of ``arms``; ``on_result(arm, result)`` is called in this
    thread as each arm finishes (experiment tracking). On a failing arm the running ones finish,
    the rest are not started, and the error is raised (a re-run resumes from the cache).
    """
    from tqdm.auto import tqdm

    results: list[ArmResult | None] = [None] * len(arms)
    bar = tqdm(
        total=len(arms), desc="arms", unit="arm", disable=None if progress is None else not progress
    )
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="arm") as pool:
        futures = {pool.submit(run_arm, graph, cfg, inputs, arm): i for i, arm in enumerate(arms)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()  # type: ignore[misc]
                i = futures[future]
                results[i] = future.result()
                if on_result is not None and results[i] is not None:
                    on_result(arms[i], results[i])
                bar.update(1)
    bar.close()
    return [r for r in results if r is not None]


def start_run(cfg: RunConfig, *, force: bool = False) -> tuple[Path, StageGraph, Inputs]:
    """Write ``config.yaml``, connect to Ray and run the shared stages (prepare → model →
    features) of ``cfg``: what every experiment does before its arms."""
    from goracs_ray.raycluster import ensure_ray

    cfg.model.check_paths()  # before Ray starts
    mirror = open_mirror(cfg.run_dir)  # a URI that cannot be opened fails here
    run_dir = local_run_dir(cfg.run_dir, cfg.staging_dir)
    check_run_format(run_dir, mirror, force=force, where=cfg.run_dir)  # before it is written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    ensure_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus)
    graph = StageGraph(run_dir, force=force, mirror=mirror)
    graph.publish(["config.yaml"])
    return run_dir, graph, prepare_inputs(cfg, graph)


def run_name(cfg: RunConfig) -> str:
    """The last component of ``run_dir`` (a local path or a URI): the run's name in reports."""
    return cfg.run_dir.rstrip("/").rsplit("/", 1)[-1]


def publish_run(graph: StageGraph) -> None:
    """Upload the run's top-level artifacts (config, manifest, results, plots) to the run_dir URI
    (no-op for a local run_dir); each stage was published when it finished."""
    names = [p.name for p in sorted(graph.run_dir.iterdir()) if p.is_file()]
    graph.publish([n for n in names if not n.startswith(".")])


def plan_run(cfg: RunConfig, arms: Sequence[Arm], *, force: bool = False) -> list[StageRecord]:
    """Every stage ``cfg`` and ``arms`` would run, with its key and whether its output is cached;
    nothing is built and Ray is not started (``goracs run --dry-run``)."""
    cfg.model.check_paths()
    run_dir, mirror = local_run_dir(cfg.run_dir, cfg.staging_dir), open_mirror(cfg.run_dir)
    check_run_format(run_dir, mirror, force=force, where=cfg.run_dir)
    graph = StageGraph(run_dir, force=force, dry_run=True, mirror=mirror)
    inputs = prepare_inputs(cfg, graph)
    for arm in arms:
        run_arm(graph, cfg, inputs, arm)
    return graph.records


def run_arms_of(cfg: RunConfig) -> list[Arm]:
    """The arms of a run: one per selection method (``select.method``, then ``compare``) at
    ``select.budget`` and ``select.seed``."""
    return [
        selection_arm(
            method,
            method,
            cfg.select,
            method=method,
            # `select.options` belong to the main method only.
            options=cfg.select.options if method == cfg.select.method else {},
            budget=cfg.select.budget,
            seed=cfg.select.seed,
            train_seed=cfg.train.seed,
        )
        for method in cfg.methods
    ]


def run_pipeline(cfg: RunConfig, *, force: bool = False) -> RunResult:
    """Run ``cfg`` (:func:`run_arms_of`), every stage cached by content; write ``results.md``.

    With ``cfg.tracking`` on, the run is logged to MLflow (:mod:`goracs_ray.tracking`).
    """
    from goracs_ray.tracking import start_tracking

    started = time.perf_counter()
    with start_tracking(cfg, command="run") as tracker:  # before Ray: a missing MLflow fails now
        run_dir, graph, inputs = start_run(cfg, force=force)

        def log_arm(arm: Arm, result: ArmResult) -> None:
            tracker.log_arm(arm, result, graph.records)

        results = run_arms(graph, cfg, inputs, run_arms_of(cfg), progress=False, on_result=log_arm)
        seconds = time.perf_counter() - started
        write_manifest(cfg, run_dir, graph.records, seconds, mlflow=tracker.reference)
        results_md = write_results(
            run_dir,
            results_table(results),
            metric=headline_metric(cfg.data.task.value),
            title=f"goracs run: {run_name(cfg)}",
            notes=_report_notes(cfg, inputs.samples_dir),
            poo_traces={r.method: r.poo_trace for r in results},
        )
        tracker.finish(run_dir, graph.records, seconds)
        publish_run(graph)
    return RunResult(run_dir=run_dir, arms=results, stages=graph.records, results_md=results_md)


_NOT_METRICS = {"n", "seconds", "task", "adapter_path"}


def _arm_result(arm: Arm, ft_dir: Path, ev_dir: Path, sel_dir: Path) -> ArmResult:
    metrics = read_json(ev_dir / "metrics.json")
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float))
    }
    train = read_json(ft_dir / "train_metrics.json")
    if isinstance(train.get("best_valid_loss"), (int, float)):
        numeric["valid_loss"] = float(train["best_valid_loss"])
    seconds = {"finetune": _stage_seconds(ft_dir), "evaluate": _stage_seconds(ev_dir)}
    predictions = str(ev_dir / "predictions.parquet")
    if arm.select is None:
        return ArmResult(
            arm.name,
            int(train["n_train"]),
            arm.train_seed,
            numeric,
            {"select": 0.0, **seconds},
            predictions=predictions,
        )
    trace = read_json(sel_dir / "selection_trace.json")
    parts = trace.get("info", {}).get("parts", [])
    return ArmResult(
        method=arm.name,
        budget=int(trace["budget"]),
        seed=arm.select.seed,
        metrics=numeric,
        seconds={"select": float(trace["seconds"]), **seconds},
        # One trace per class part (label-enhanced); the report plots the single-part case.
        poo_trace=parts[0]["poo_trace"] if len(parts) == 1 else [],
        predictions=predictions,
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


def config_hash(cfg: RunConfig) -> str:
    """16 hex digits of the sha256 of the resolved config (manifest.json's ``config_hash``)."""
    payload = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    """``run_dir/config.yaml``: the resolved config, replayable as is."""
    with atomic_file(run_dir / "config.yaml") as part:
        part.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def write_manifest(
    cfg: RunConfig, run_dir: Path, records, seconds: float, *, mlflow: dict | None = None
) -> None:
    """``run_dir/manifest.json``: config hash, git sha, versions, seeds, stage timings, and
    ``mlflow`` (tracking URI, experiment and run id) when the run is tracked."""
    manifest: dict[str, Any] = {
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
        "git_sha": git_sha(),
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
    if mlflow is not None:
        manifest["mlflow"] = mlflow
    write_json(run_dir / "manifest.json", manifest)
