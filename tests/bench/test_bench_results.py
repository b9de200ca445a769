"""`goracs bench` results: table, CIs, bold best, headroom, paired comparison to random, config."""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from goracs_ray.bench.config import load_bench_config
from goracs_ray.io import write_parquet
from goracs_ray.results import (
    ArmResult,
    against_random,
    headroom,
    log_headroom,
    results_markdown,
    results_table,
    write_results,
)

_NDCG = {  # method → ndcg@10 per seed 0, 1, 2
    "random": [0.10, 0.12, 0.14],
    "goracs": [0.15, 0.16, 0.17],
    "grand": [0.05, 0.30, 0.10],
}


def _arms() -> list[ArmResult]:
    arms = [
        ArmResult(
            method,
            1024,
            seed,
            {"ndcg@10": v, "hr@10": 0.5, "log_loss": 1.0 + seed},
            {"select": 2.0, "finetune": 40.0 + seed, "evaluate": 5.0},
        )
        for method, values in _NDCG.items()
        for seed, v in enumerate(values)
    ]
    arms += [
        ArmResult("full_data", 16445, s, {"ndcg@10": 0.2, "hr@10": 0.6, "log_loss": 0.5}, {})
        for s in range(3)
    ]
    return arms


def _row(text: str, label: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {label} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_has_one_row_per_arm_with_metrics_and_times():
    table = results_table(_arms())
    assert table.num_rows == 12
    assert table.column_names == [
        "method", "budget", "seed", "hr@10", "log_loss", "ndcg@10",
        "select_s", "finetune_s", "evaluate_s", "predictions",
    ]  # fmt: skip
    assert table.column("predictions").null_count == 12  # hand-made arms: no predictions
    assert table.column("finetune_s").to_pylist()[:3] == [40.0, 41.0, 42.0]


def test_markdown_without_predictions_falls_back_to_mean_std_and_bolds_the_strict_winner():
    text = results_markdown(results_table(_arms()), metric="ndcg@10", title="t")
    header = _row(text, "method")
    assert header[:3] == ["method", "seeds", "n"]
    random, goracs, grand = _row(text, "random"), _row(text, "goracs"), _row(text, "grand")
    col = header.index("ndcg@10")
    assert random[col] == "0.1200 ± 0.0200"  # no per-sample values (old runs): no CI
    assert random[header.index("n")] == "–"
    assert goracs[col] == "**0.1600 ± 0.0100**"  # best mean among selection methods
    assert grand[col] == "0.1500 ± 0.1323"
    assert "**" not in random[header.index("hr@10")]  # a tie is not bolded
    assert goracs[header.index("finetune s")] == "41.0 ± 1.0"
    full = _row(text, "full_data (16445 samples, reference)")
    assert full[col] == "0.2000 ± 0.0000"  # higher, but the reference row is never bold
    assert "**" not in " ".join(full)
    # lower-is-better metrics: the smallest mean wins (all equal here → no bold)
    assert all("**" not in r[header.index("log_loss")] for r in (random, goracs, grand))
    assert "not a significance claim" in text


def test_against_random_without_predictions_is_paired_by_seed_with_no_verdict():
    text = results_markdown(results_table(_arms()), metric="ndcg@10", title="t")
    section = text[text.index("## Against random") : text.index("## goracs against")]
    # goracs − random = +0.05, +0.04, +0.03; grand − random = −0.05, +0.18, −0.04
    no_ci = ["–", "– × 3", "n/a (no per-sample predictions)"]
    assert _row(section, "goracs")[1:] == ["1024", "+0.0400", *no_ci]
    assert _row(section, "grand")[1:] == ["1024", "+0.0300", *no_ci]
    assert "| random |" not in section
    # the headroom: full data − random = +0.10, +0.08, +0.06
    assert _row(section, "full_data")[1:] == ["1024", "+0.0800", *no_ci]
    assert "**No headroom" not in text  # unknown without a CI: no warning
    # GORACS against every method: goracs − grand = 0.16 − 0.15, goracs − random = 0.16 − 0.12
    section = text[text.index("## goracs against every method") :]
    assert _row(section, "grand")[1:] == ["1024", "+0.0100", *no_ci]
    assert _row(section, "random")[1:] == ["1024", "+0.0400", *no_ci]
    assert "| goracs |" not in section
    assert "| full_data |" not in section


def test_goracs_against_every_method_is_paired_with_verdicts_only_beside_other_baselines(tmp_path):
    arms = _prediction_arms(tmp_path, full_shift=6)
    text = results_markdown(results_table(arms), metric="ndcg@10", title="t")
    section = text[text.index("## goracs against every method") :]
    assert text.index("## Against random") < text.index("## goracs against every method")
    for budget in ("64", "256"):
        rows = [r for r in section.splitlines() if r.startswith("| grand ")]
        grand = next(_row(r, "grand") for r in rows if _row(r, "grand")[1] == budget)
        assert float(grand[2]) > 0  # goracs − grand: goracs ranks the target 6 places better
        assert grand[4] == f"{_N} × 3"
        assert grand[5] == "better"
    assert _row(section, "random")[5] == "better"
    # worse: the sign is goracs − method, so a method ahead of goracs reads "worse"
    swapped = [
        dataclasses.replace(
            a, method={"goracs": "grand", "grand": "goracs"}.get(a.method, a.method)
        )
        for a in arms
    ]
    text = results_markdown(results_table(swapped), metric="ndcg@10", title="t")
    assert _row(text[text.index("## goracs against every method") :], "grand")[5] == "worse"
    # only random beside goracs: the section would repeat *Against random*
    alone = [a for a in arms if a.method != "grand"]
    assert "against every method" not in results_markdown(
        results_table(alone), metric="ndcg@10", title="t"
    )


_N = 300  # test samples of the synthetic predictions


def _prediction_arms(tmp_path, full_shift: int) -> list[ArmResult]:
    """random / goracs (ranks 6 better on every sample) / grand (random's ranks, re-drawn per
    sample at the same distribution) at budgets 64 and 256, seeds 0–2, with predictions files
    whose rows are shuffled per arm; full data = random@64's ranks − ``full_shift``."""
    rng = np.random.default_rng(0)
    ids = np.array([f"t{i:04d}" for i in range(_N)], dtype=object)
    hard = rng.integers(0, 40, _N)  # per-sample difficulty shared by every arm
    arms = []

    def arm(method, budget, seed, rank):
        order = rng.permutation(_N)
        path = tmp_path / "evaluate" / method / f"b{budget}-s{seed}" / "predictions.parquet"
        write_parquet(path, pa.table({"sample_id": ids[order], "rank": rank[order]}))
        ndcg = float(np.where(rank < 10, 1 / np.log2(rank + 2.0), 0.0).mean())
        metrics = {"ndcg@10": ndcg, "hr@10": float((rank < 10).mean()), "valid_loss": 2.0}
        times = {"select": 1.0, "finetune": 10.0}
        arms.append(ArmResult(method, budget, seed, metrics, times, predictions=str(path)))

    for budget in (64, 256):
        for seed in range(3):
            base = hard + rng.integers(0, 3, _N)
            arm("random", budget, seed, base)
            arm("goracs", budget, seed, np.maximum(base - 6, 0))
            arm("grand", budget, seed, hard + rng.integers(0, 3, _N))
            if budget == 64:
                arm("full_data", 4096, seed, np.maximum(base - full_shift, 0))
    return arms


def test_markdown_with_predictions_shows_cis_n_and_verdicts(tmp_path):
    table = results_table(_prediction_arms(tmp_path, full_shift=6))
    write_results(tmp_path, table, metric="ndcg@10")
    text = (tmp_path / "results.md").read_text()
    header = _row(text, "method")
    goracs = _row(text, "goracs")
    assert goracs[header.index("seeds")] == "3"
    assert goracs[header.index("n")] == str(_N)
    ci = goracs[header.index("ndcg@10")].strip("*")
    found = re.fullmatch(r"(0\.\d{4}) \[(0\.\d{4}), (0\.\d{4})\]", ci)
    mean, low, high = (float(x) for x in found.groups())
    assert low < mean < high
    assert goracs[header.index("valid_loss")] == "2.0000 ± 0.0000"  # no per-sample values
    section = text[text.index("## Against random") :]
    row = _row(section, "goracs")
    assert row[1] == "64"
    assert row[4] == f"{_N} × 3"
    assert row[5] == "better"
    assert _row(section, "grand")[5] == "no difference"
    # relative paths in results.parquet, resolved against the run dir when read back
    stored = pq.read_table(tmp_path / "results.parquet").column("predictions").to_pylist()
    assert stored[0] == "evaluate/random/b64-s0/predictions.parquet"
    again = results_markdown(pq.read_table(tmp_path / "results.parquet"), metric="ndcg@10",
                             title="t", root=tmp_path)  # fmt: skip
    assert again.split("\n", 2)[2] == text.split("\n", 2)[2]
    # text order: headroom first, then the budget tables, then the comparison
    assert text.index("## Headroom") < text.index("## Budget 64") < text.index("## Against")


def test_headroom_present_and_the_budget_step(tmp_path):
    table = results_table(_prediction_arms(tmp_path, full_shift=6))
    room = headroom(table, "ndcg@10")
    assert sorted(room.random) == [64, 256]
    assert room.full_data.n_seeds == 3
    assert room.absent == []
    lines = room.lines()
    assert lines[0].startswith("- headroom: full_data − random@64 = +0.")
    assert lines[0].endswith(f"(n={_N} × 3 seeds): present")
    assert lines[2].startswith("- random@256 − random@64 = ")
    assert lines[2].endswith("ndcg@10 no difference with the budget")
    text = results_markdown(table, metric="ndcg@10", title="t")
    assert "| random@64 | 64 | 3 | 300 |" in text
    assert "| full_data | 4096 | 3 | 300 |" in text
    assert "**No headroom" not in text
    assert against_random(table, "ndcg@10")["full_data", 64].low > 0


def test_no_headroom_is_warned_in_results_md_and_logged(tmp_path, caplog):
    table = results_table(_prediction_arms(tmp_path, full_shift=0))  # full data = random
    text = results_markdown(table, metric="ndcg@10", title="t")
    assert "**No headroom at budget 64**: full_data − random@64 = +0.0000" in text
    assert "no selection method can show a gain here" in text
    assert "**No headroom at budget 256**" in text
    room = headroom(table, "ndcg@10")
    assert room.absent == [64, 256]
    assert room.lines()[0].endswith("absent (no difference)")
    with caplog.at_level(logging.WARNING, logger="goracs_ray.results"):
        log_headroom(room)
    assert sum("no headroom at budget" in r.getMessage() for r in caplog.records) == 2


def test_mismatched_test_samples_between_paired_arms_are_refused(tmp_path):
    arms = _prediction_arms(tmp_path, full_shift=6)
    path = arms[1].predictions  # goracs b64 s0
    write_parquet(path, pq.read_table(path).slice(1))
    with pytest.raises(ValueError, match="cannot pair `ndcg@10` by `sample_id`"):
        results_markdown(results_table(arms), metric="ndcg@10", title="t")


def test_write_results_writes_parquet_markdown_plots_and_rejects_an_unknown_metric(tmp_path):
    table = results_table(_arms())
    with pytest.raises(ValueError, match="`bench.metric` 'auc'"):
        write_results(tmp_path / "x", table, metric="auc")
    assert not (tmp_path / "x").exists()
    path = write_results(tmp_path, table, metric="ndcg@10", notes=["- note"])
    assert path.read_text().startswith(f"# goracs bench: {tmp_path.name}\n\n- note")
    for name in ("results.parquet", "metric_vs_budget.png", "time.png"):
        assert (tmp_path / name).stat().st_size > 0


def _write(tmp_path, data: dict):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bench_config_quick_overrides_and_errors(tmp_path):
    base = {
        "run_dir": str(tmp_path / "b"),
        "bench": {
            "methods": ["random", {"name": "faithful", "method": "goracs",
                                   "options": {"estimator": "faithful"}}],
            "quick": {"bench.seeds": [7], "data.max_users": 5},
        },
    }  # fmt: skip
    cfg = load_bench_config(_write(tmp_path, base))
    assert [m.name for m in cfg.bench.specs] == ["random", "faithful"]
    assert cfg.bench.specs[1].method == "goracs"
    assert cfg.bench.seeds == [0, 1, 2]
    quick = load_bench_config(_write(tmp_path, base), ["bench.budgets=[8]"], quick=True)
    assert (quick.bench.seeds, quick.data.max_users, quick.bench.budgets) == ([7], 5, [8])
    assert str(quick.run_dir).endswith("b-quick")
    with pytest.raises(ValueError, match="`select.budget` is set by `bench.budgets`"):
        load_bench_config(_write(tmp_path, {**base, "select": {"budget": 5}}))
    with pytest.raises(ValueError, match="`compare` is set by `bench.methods`"):
        load_bench_config(_write(tmp_path, {**base, "compare": ["grand"]}))
    with pytest.raises(ValueError, match="`--quick` needs a `bench.quick`"):
        load_bench_config(_write(tmp_path, {"bench": {"seeds": [1]}}), quick=True)
    with pytest.raises(ValueError, match="unique names"):
        load_bench_config(_write(tmp_path, {"bench": {"methods": ["random", "random"]}}))
    with pytest.raises(ValueError, match="reserved for the full-data row"):
        load_bench_config(_write(tmp_path, {"bench": {"methods": ["full_data"]}}))
    with pytest.raises(ValueError, match="`bench.budgets`"):
        load_bench_config(_write(tmp_path, {"bench": {"budgets": [0]}}))


def _default_config(name: str):
    from pathlib import Path

    from goracs_ray.bench import load_bench_config

    return load_bench_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / name)


_TASK_CONFIGS = {
    "seqrec": ("bench_ml100k", "bench_ml100k_headroom", "bench_ml100k_premise"),
    "ctr": ("bench_ml100k_ctr", "bench_ml100k_ctr_headroom", "bench_ml100k_ctr_premise"),
}
"""Per task: the method comparison, its headroom and its premise study (jobs/configs/)."""


@pytest.mark.parametrize("task", sorted(_TASK_CONFIGS))
def test_default_headroom_benchmark_arms_longest_first(task):
    """The headroom configs: full data, then random at the headroom budgets (largest first), then
    random at the selection budget, 3+ seeds and 3+ budgets; nothing else."""
    from goracs_ray.bench import bench_arms

    cfg = _default_config(f"{_TASK_CONFIGS[task][1]}.yaml")
    assert cfg.data.task.value == task
    arms = bench_arms(cfg)
    seeds = cfg.bench.seeds
    assert len(seeds) >= 3
    assert len(cfg.bench.headroom_budgets) + len(cfg.bench.budgets) >= 3
    assert max(cfg.bench.headroom_budgets) > max(cfg.bench.budgets)
    assert [a.name for a in arms[: len(seeds)]] == ["full_data"] * len(seeds)
    rest = arms[len(seeds) :]
    assert {a.name for a in rest} == {"random"}
    budgets = [*sorted(cfg.bench.headroom_budgets, reverse=True), *cfg.bench.budgets]
    assert [a.select.budget for a in rest] == [b for b in budgets for _ in seeds]
    assert len({a.path for a in arms}) == len(arms)


@pytest.mark.parametrize("task", sorted(_TASK_CONFIGS))
def test_default_method_benchmark_arms_every_method_at_one_budget(task):
    """The method configs: random, GORACS, its greedy stage and every baseline at one selection
    budget, 3 seeds; no headroom arms and no premise study (their own configs have those)."""
    from goracs_ray.bench import bench_arms
    from goracs_ray.select.registry import available_selectors

    cfg = _default_config(f"{_TASK_CONFIGS[task][0]}.yaml")
    assert cfg.data.task.value == task
    arms = bench_arms(cfg)
    specs = cfg.bench.specs
    assert not cfg.bench.full_data
    assert not cfg.bench.headroom_budgets
    assert cfg.bench.poo_correlation is None
    assert len(cfg.bench.budgets) == 1
    assert len(cfg.bench.seeds) >= 3
    assert len(arms) == len(specs) * len(cfg.bench.seeds)
    assert [m.name for m in specs[:3]] == ["random", "goracs", "goracs_greedy"]
    assert list(dict.fromkeys(a.name for a in arms)) == [m.name for m in specs]
    baselines = {m.method for m in specs} - {"random", "goracs", "goracs_greedy"}
    assert len(baselines) >= 9, baselines
    assert baselines <= set(available_selectors())
    assert len({a.path for a in arms}) == len(arms)  # every arm has its own stage dirs


@pytest.mark.parametrize("task", sorted(_TASK_CONFIGS))
def test_default_premise_benchmark_every_method_then_20_random_coresets(task):
    """The premise configs: every method of the method config at its budget (first seed), then
    20+ extra random coresets of that budget, each fine-tuned with the first seed."""
    from goracs_ray.bench import bench_arms

    methods_cfg = _default_config(f"{_TASK_CONFIGS[task][0]}.yaml")
    cfg = _default_config(f"{_TASK_CONFIGS[task][2]}.yaml")
    arms = bench_arms(cfg)
    seeds = cfg.bench.seeds
    assert cfg.bench.specs == methods_cfg.bench.specs
    assert not cfg.bench.full_data
    assert not cfg.bench.headroom_budgets
    study = [a for a in arms if a.name == "poo_random"]
    assert len(study) == cfg.bench.poo_correlation.random_subsets >= 20
    assert len({a.select.seed for a in study}) == len(study)
    assert {a.train_seed for a in study} == {seeds[0]}
    assert {a.select.budget for a in study} == {cfg.bench.poo_budget} == set(cfg.bench.budgets)
    methods = arms[: len(arms) - len(study)]
    assert [a.name for a in methods] == [m.name for m in cfg.bench.specs] * len(seeds)
    assert len({a.path for a in arms}) == len(arms)


@pytest.mark.parametrize("task", sorted(_TASK_CONFIGS))
def test_default_benchmarks_of_a_task_share_one_substrate(task):
    """The headroom, method and premise configs of a task measure the same thing: identical data,
    model, features, fine-tuning and evaluation settings, the same selection budget and first
    seed, and their own run dirs. CTR differs from SeqRec only in what the task needs."""

    methods, *others = (_default_config(f"{n}.yaml") for n in _TASK_CONFIGS[task])
    for other in others:
        for section in ("data", "model", "features", "select", "train", "eval"):
            assert getattr(other, section) == getattr(methods, section), section
        assert other.bench.budgets == methods.bench.budgets
        assert other.bench.seeds[0] == methods.bench.seeds[0]
    assert len({c.run_dir for c in (methods, *others)}) == 3
    seqrec, ctr = (_default_config(f"{_TASK_CONFIGS[t][0]}.yaml") for t in ("seqrec", "ctr"))
    assert (seqrec.model, seqrec.train) == (ctr.model, ctr.train)
    assert dataclasses.replace(ctr.data, task=seqrec.data.task) == seqrec.data


@pytest.mark.parametrize(
    ("bench", "match"),
    [
        ({"budgets": [64], "headroom_budgets": [64]}, "headroom_budgets"),
        ({"methods": ["goracs"], "headroom_budgets": [128]}, "needs `random`"),
        ({"budgets": [64], "poo_correlation": {"budget": 32}}, "poo_correlation.budget"),
        ({"poo_correlation": {"random_subsets": -1}}, "random_subsets"),
        ({"methods": ["poo_random"]}, "poo_random"),
    ],
)
def test_bench_settings_reject_bad_headroom_and_poo_study(bench, match):
    from goracs_ray.bench.config import BenchSettings
    from goracs_ray.configutil import from_dict

    with pytest.raises(ValueError, match=match):
        from_dict(BenchSettings, bench)


@pytest.mark.parametrize(("cap", "expected"), [(None, 20), (4, 4), (50, 20)])
def test_full_data_epochs_caps_only_the_full_data_fine_tunes(tmp_path, monkeypatch, cap, expected):
    """`bench.full_data_epochs` reaches the full-data arms' fine-tuning (never above
    `train.epochs`); the selection arms keep `train.epochs`."""
    import goracs_ray.train
    from goracs_ray.bench import bench_arms
    from goracs_ray.pipeline import Inputs, run_arm
    from goracs_ray.stages import StageGraph

    cfg = _default_config("bench_ml100k_headroom.yaml")
    cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, full_data_epochs=cap))
    assert cfg.train.epochs == 20
    arms = bench_arms(cfg)
    assert {a.max_epochs for a in arms if a.name == "full_data"} == {cap}
    assert {a.max_epochs for a in arms if a.name != "full_data"} == {None}

    seen = []

    def fake_finetune(train_cfg, **_):
        seen.append(train_cfg.epochs)
        raise RuntimeError("stop after reading the config")

    monkeypatch.setattr(goracs_ray.train, "finetune", fake_finetune)
    inputs = Inputs(
        tmp_path, cfg.model, tmp_path, {"prepare": "p", "model": "m", "adapter": None}, cfg.train
    )
    graph = StageGraph(tmp_path / "run")
    for arm in (arms[0], dataclasses.replace(arms[0], max_epochs=None)):
        with pytest.raises(RuntimeError, match="stop after"):
            run_arm(graph, cfg, inputs, arm)
    assert seen == [expected, 20]


def test_full_data_epochs_must_be_positive():
    from goracs_ray.bench.config import BenchSettings

    with pytest.raises(ValueError, match="full_data_epochs"):
        BenchSettings(full_data_epochs=0)
