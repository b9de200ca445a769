"""`goracs bench` results: table, mean ± std, bold best, paired comparison to random, config."""

from __future__ import annotations

import pytest
import yaml

from goracs_ray.bench.config import load_bench_config
from goracs_ray.bench.results import results_markdown, results_table, write_results
from goracs_ray.report import ArmResult

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
        "select_s", "finetune_s", "evaluate_s",
    ]  # fmt: skip
    assert table.column("finetune_s").to_pylist()[:3] == [40.0, 41.0, 42.0]


def test_markdown_gives_mean_std_bolds_the_strict_winner_and_keeps_full_data_apart():
    text = results_markdown(results_table(_arms()), metric="ndcg@10", title="t")
    header = _row(text, "method")
    random, goracs, grand = _row(text, "random"), _row(text, "goracs"), _row(text, "grand")
    col = header.index("ndcg@10")
    assert random[col] == "0.1200 ± 0.0200"
    assert goracs[col] == "**0.1600 ± 0.0100**"  # best mean among selection methods
    assert grand[col] == "0.1500 ± 0.1323"
    assert "**" not in random[header.index("hr@10")]  # a tie is not bolded
    assert goracs[header.index("finetune s")] == "41.0 ± 1.0"
    full = _row(text, "full_data (16445 samples, reference)")
    assert full[col] == "0.2000 ± 0.0000"  # higher, but the reference row is never bold
    assert "**" not in " ".join(full)
    # lower-is-better metrics: the smallest mean wins (all equal here → no bold)
    assert all("**" not in r[header.index("log_loss")] for r in (random, goracs, grand))


def test_against_random_is_paired_by_seed_and_judged_against_the_seed_spread():
    text = results_markdown(results_table(_arms()), metric="ndcg@10", title="t")
    section = text[text.index("## Against random") :]
    goracs, grand = _row(section, "goracs"), _row(section, "grand")
    # goracs − random = +0.05, +0.04, +0.03: mean +0.04, std 0.01; spread max(0.01, 0.02)
    assert goracs[2:] == ["+0.0400", "0.0100", "3/3", "yes, better"]
    # grand − random = −0.05, +0.18, −0.04: mean +0.03 < grand's own spread 0.13
    assert grand[2:5] == ["+0.0300", "0.1300", "1/3"]
    assert grand[5] == "no"
    assert "| random |" not in section
    # the headroom: full data − random = +0.10, +0.08, +0.06
    assert _row(section, "full_data")[1:] == ["1024", "+0.0800", "0.0200", "3/3", "yes, better"]


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
