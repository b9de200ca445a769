"""`run_bench`: every method × budget × seed (+ full data) through the pipeline's cached stages.

Layout of ``run_dir`` (shared stages as in ``goracs run``)::

    prepare/ model/ features/                 shared by every arm
    select/<method>/b<budget>-s<seed>/        coreset of one arm
    finetune/<method>/b<budget>-s<seed>/      adapter (full data: finetune/full_data/s<seed>/)
    evaluate/<method>/b<budget>-s<seed>/      metrics.json, predictions.parquet
    results.parquet  results.md  metric_vs_budget.png  time.png  manifest.json  config.yaml
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from goracs_ray.bench.config import (
    FULL_DATA,
    POO_RANDOM,
    POO_RANDOM_SEED,
    BenchConfig,
    MethodSpec,
)
from goracs_ray.io import read_json
from goracs_ray.pipeline import (
    Arm,
    Inputs,
    publish_run,
    run_arms,
    run_name,
    selection_arm,
    start_run,
    write_manifest,
)
from goracs_ray.results import (
    ArmResult,
    Headroom,
    headline_metric,
    headroom,
    log_headroom,
    results_table,
    write_results,
)
from goracs_ray.tracking import start_tracking

__all__ = ["BenchResult", "bench_arms", "run_bench"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` produced."""

    run_dir: Path
    """The benchmark directory."""
    table: pa.Table
    """One row per arm (``results.parquet``): method, budget, seed, metrics, stage seconds."""
    results_md: Path
    """``results.md``: headroom, mean [95 % CI] per method and budget, paired Δ to random."""
    seconds: float
    """Wall time of this invocation (cached stages cost ≈ 0)."""
    headroom: Headroom | None = None
    """``random`` per budget against full data on the headline metric (None without random)."""


def bench_arms(cfg: BenchConfig) -> list[Arm]:
    """The arms of ``cfg``: full-data rows first (the longest), then budget, method, seed."""
    from goracs_ray.select import get_selector  # the package registers every baseline

    for spec in cfg.bench.specs:
        get_selector(spec.method)  # unknown names fail before any stage runs
    bench = cfg.bench
    arms = []
    if bench.full_data:
        arms += [
            Arm(
                FULL_DATA,
                f"{FULL_DATA}/s{s}",
                None,
                train_seed=s,
                max_epochs=bench.full_data_epochs,
            )
            for s in bench.seeds
        ]

    def arm(spec: MethodSpec, budget: int, seed: int, train_seed: int, name: str = "") -> Arm:
        name = name or spec.name
        return selection_arm(
            name,
            f"{name}/b{budget}-s{seed}",
            cfg.select,
            method=spec.method or spec.name,
            options=spec.options,
            budget=budget,
            seed=seed,
            train_seed=train_seed,
        )

    random = next((spec for spec in bench.specs if spec.name == "random"), None)
    for budget in sorted(bench.headroom_budgets, reverse=True):  # the longest first
        arms += [arm(random, budget, seed, seed) for seed in bench.seeds]
    for budget in bench.budgets:
        for spec in bench.specs:
            arms += [arm(spec, budget, seed, seed) for seed in bench.seeds]
    if bench.poo_correlation is not None:
        for i in range(bench.poo_correlation.random_subsets):
            seed = POO_RANDOM_SEED + i
            subset = dataclasses.replace(random or MethodSpec("random"), options={})
            arms.append(arm(subset, bench.poo_budget, seed, bench.seeds[0], name=POO_RANDOM))
    return arms


def run_bench(
    cfg: BenchConfig, *, force: bool = False, progress: bool | None = None
) -> BenchResult:
    """Run the benchmark ``cfg`` (every stage cached by content) and write its results.

    Arms run ``cfg.bench.parallel_arms`` at a time. Re-running the same config costs seconds;
    adding a seed, budget or method runs only the new arms. On a failing arm the running ones
    finish, the rest are not started, and the error is raised (a re-run resumes from the cache).
    """
    started = time.perf_counter()
    arms = bench_arms(cfg)
    with start_tracking(cfg, command="bench") as tracker:  # before Ray: missing MLflow fails now
        run_dir, graph, inputs = start_run(cfg, force=force)
        n_train = pq.read_metadata(inputs.samples_dir / "train.parquet").num_rows
        for field in ("budgets", "headroom_budgets"):
            too_big = [b for b in getattr(cfg.bench, field) if b >= n_train]
            if too_big:
                raise ValueError(
                    f"`bench.{field}` {too_big} are not below the {n_train} training samples; "
                    "lower them (the full-data row is `bench.full_data`)"
                )
        _dry_run(cfg, inputs, arms)
        logger.info("bench: %d arms, %d at a time", len(arms), cfg.bench.parallel_arms)

        def log_arm(arm: Arm, result: ArmResult) -> None:
            tracker.log_arm(arm, result, graph.records)

        done_arms = run_arms(
            graph,
            cfg,
            inputs,
            arms,
            parallel=cfg.bench.parallel_arms,
            progress=progress,
            on_result=log_arm,
        )
        card = read_json(inputs.samples_dir / "dataset_card.json")
        metric = cfg.bench.metric or headline_metric(cfg.data.task.value)
        sections = _premise(cfg, inputs, results_table(done_arms), run_dir, metric)
        table = results_table([r for r in done_arms if r.method != POO_RANDOM])
        results_md = write_results(
            run_dir,
            table,
            metric=metric,
            title=f"goracs bench: {run_name(cfg)}",
            notes=_notes(cfg, card, n_train),
            sections=sections,
        )
        room = headroom(table, metric)
        log_headroom(room)
        seconds = time.perf_counter() - started
        write_manifest(cfg, run_dir, graph.records, seconds, mlflow=tracker.reference)
        tracker.finish(run_dir, graph.records, seconds)
        publish_run(graph)
    return BenchResult(run_dir, table, results_md, seconds, room)


def _premise(cfg: BenchConfig, inputs: Inputs, table, run_dir: Path, metric: str) -> list[str]:
    """The POO-correlation section (``bench.poo_correlation``), else nothing."""
    if cfg.bench.poo_correlation is None:
        return []
    from goracs_ray.bench.premise import premise_lines, premise_table
    from goracs_ray.select.inputs import load_feature_table

    features = load_feature_table(inputs.features_dir, samples_dir=inputs.samples_dir)
    budget, lam = cfg.bench.poo_budget, cfg.select.lam
    rows = premise_table(table, features, budget=budget, lam=lam, run_dir=run_dir)
    return premise_lines(rows, metric, budget=budget, lam=lam)


def _dry_run(cfg: BenchConfig, inputs: Inputs, arms: list[Arm], rows: int = 64) -> None:
    """Run every method once on the first ``rows`` samples, so that a missing feature (e.g. LESS
    without ``features.proj_dim``) or a bad option fails in seconds, not after an hour of arms."""
    from goracs_ray.select.config import run_select
    from goracs_ray.select.inputs import load_feature_table

    table = load_feature_table(
        inputs.features_dir,
        samples_dir=inputs.samples_dir,
        label_column="label" if cfg.data.task.value == "ctr" else None,
    )
    small = table.head(min(rows, table.n_train), min(rows, table.n_valid))
    tried = set()
    for arm in arms:
        if arm.select is None or arm.name in tried:
            continue
        tried.add(arm.name)
        probe = dataclasses.replace(
            arm.select, budget=min(8, small.n_train), distributed=False, compress_valid=None
        )
        try:
            run_select(probe, small)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"bench method `{arm.name}` cannot run on these features: {exc}"
            ) from exc


def _notes(cfg: BenchConfig, card: dict, n_train: int) -> list[str]:
    counts = ", ".join(f"{k} {v['samples']}" for k, v in card["splits"].items())
    tested = cfg.eval.max_samples or card["splits"]["test"]["samples"]
    model = cfg.model.path or "tiny LLaMA pretrained on the catalog (item text only)"
    lora = f"r {cfg.model.lora.r}, {', '.join(cfg.model.lora.target_modules)}"
    stopping = f" with early stopping (patience {cfg.train.patience})" if cfg.train.patience else ""
    lines = [
        f"- data: `{cfg.data.source.kind.value}` `{cfg.data.task.value}`; samples: {counts}",
        f"- model: {model}; LoRA ({lora}) fine-tuning, at most {cfg.train.epochs} epoch(s)"
        f"{stopping}, lr {cfg.train.lr}",
        f"- seeds: {cfg.bench.seeds} (selection and fine-tuning); test samples evaluated: {tested}",
        f"- GORACS: λ = {cfg.select.lam}, max_iters {cfg.select.max_iters}, "
        f"estimator {cfg.select.estimator.value}",
    ]
    if cfg.bench.full_data:
        cap = cfg.bench.full_data_epochs
        capped = f", at most {cap} epoch(s)" if cap is not None and cap < cfg.train.epochs else ""
        lines.append(f"- `{FULL_DATA}`: fine-tuned on all {n_train} training samples{capped}")
    return lines
