"""`goracs bench` end to end on the toy data: arms, results, caching, new arms only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from goracs_ray.bench import load_bench_config, run_bench
from goracs_ray.cli import main


@pytest.fixture(scope="module")
def bench_yaml(tmp_path_factory, make_toy_run_config):
    root = tmp_path_factory.mktemp("bench")
    cfg = make_toy_run_config(root)
    del cfg["compare"], cfg["select"]["budget"]
    cfg["bench"] = {
        "methods": ["random", "goracs_greedy"],
        "budgets": [16],
        "seeds": [0, 1],
        "full_data": True,
        "parallel_arms": 2,
    }
    # tracked: the arms' nested MLflow runs are checked below (no run of its own for that)
    cfg["tracking"] = {"mlflow_uri": f"file://{root}/mlruns", "experiment": "toy-bench"}
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def first_run(bench_yaml, ray_local):
    had_opt_in = "MLFLOW_ALLOW_FILE_STORE" in os.environ
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        assert main(["bench", str(bench_yaml)]) == 0
    if not had_opt_in:  # the tracker opted into MLflow's file store
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    return Path(load_bench_config(bench_yaml).run_dir)


def test_a_tracked_bench_has_a_nested_run_per_arm(first_run, bench_yaml):
    """One parent run per invocation, one nested run per arm, each with its final metrics."""
    from mlflow.tracking import MlflowClient

    cfg = load_bench_config(bench_yaml)
    client = MlflowClient(cfg.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name("toy-bench")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["bench.budgets"] == "[16]"
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {
        "random/b16-s0", "random/b16-s1", "goracs_greedy/b16-s0", "goracs_greedy/b16-s1",
        "full_data/s0", "full_data/s1",
    }  # fmt: skip
    child = children["goracs_greedy/b16-s1"]
    assert child.data.params["select.method"] == "goracs_greedy"
    assert "poo" in child.data.metrics  # the selection trace, as a step metric
    metrics = json.loads(
        (first_run / "evaluate" / "goracs_greedy" / "b16-s1" / "metrics.json").read_text()
    )
    assert child.data.metrics["ndcg_at_10"] == pytest.approx(metrics["ndcg@10"])
    assert len(client.get_metric_history(child.info.run_id, "valid_loss")) == 1  # one epoch
    assert "poo" not in children["random/b16-s0"].data.metrics
    assert "results.md" in {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_bench_runs_every_arm_and_writes_results(first_run):
    run_dir = first_run
    table = pq.read_table(run_dir / "results.parquet").to_pandas()
    arms = sorted(zip(table.method, table.budget, table.seed))
    assert arms == [
        ("full_data", 96, 0), ("full_data", 96, 1),
        ("goracs_greedy", 16, 0), ("goracs_greedy", 16, 1),
        ("random", 16, 0), ("random", 16, 1),
    ]  # fmt: skip
    assert table["ndcg@10"].between(0, 1).all()
    assert (table.finetune_s > 0).all()
    assert (table[table.method == "full_data"].select_s == 0).all()
    for seed in (0, 1):
        arm = f"goracs_greedy/b16-s{seed}"
        assert (run_dir / "finetune" / arm / "adapter" / "adapter_config.json").is_file()
        assert json.loads((run_dir / "evaluate" / arm / "metrics.json").read_text())["n"] == 4
    assert (run_dir / "finetune" / "full_data" / "s1" / "adapter").is_dir()
    # a deterministic method picks the same coreset for both seeds; random does not
    ids = {
        (m, s): pq.read_table(run_dir / "select" / m / f"b16-s{s}" / "coreset.parquet")
        .column("sample_id")
        .to_pylist()
        for m in ("random", "goracs_greedy")
        for s in (0, 1)
    }
    assert ids["goracs_greedy", 0] == ids["goracs_greedy", 1]
    assert ids["random", 0] != ids["random", 1]
    assert table.predictions.notna().all()  # relative to the run dir, resolved when read
    assert (run_dir / table.predictions.iloc[0]).is_file()
    assert table.valid_loss.notna().all()  # the fine-tune's best validation loss
    text = (run_dir / "results.md").read_text()
    assert "## Headroom: does more training data help? (ndcg@10)" in text
    assert "- headroom: full_data − random@16 = " in text
    assert "## Budget 16: mean [95 % CI] over seeds and test samples" in text
    assert "| full_data (96 samples, reference) | 2 | 4 |" in text  # 2 seeds × 4 test samples
    assert "| goracs_greedy | 2 | 4 |" in text
    assert "| goracs_greedy | 16 |" in text  # the paired comparison with random
    assert " | 4 × 2 | " in text[text.index("## Against random") :]
    assert (run_dir / "metric_vs_budget.png").is_file()
    assert (run_dir / "time.png").is_file()
    stages = [s["name"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]
    assert stages[:3] == ["prepare", "model", "features"]
    assert len(stages) == 3 + 2 * 2 + 4 * 3


def test_rerun_is_cached_and_a_new_seed_runs_only_its_arms(first_run, bench_yaml, ray_local):
    again = run_bench(load_bench_config(bench_yaml), progress=False)
    assert again.table.num_rows == 6
    manifest = json.loads((first_run / "manifest.json").read_text())
    assert all(s["cached"] for s in manifest["stages"])
    # cached stages keep the time their output took to build
    assert all(s["seconds"] > 0 for s in manifest["stages"] if s["name"].startswith("finetune"))
    changed = load_bench_config(
        bench_yaml,
        ["bench.methods=[random]", "bench.seeds=[0, 1, 2]", "bench.full_data=false"],
    )
    result = run_bench(changed, progress=False)
    ran = sorted(
        s["name"]
        for s in json.loads((first_run / "manifest.json").read_text())["stages"]
        if not s["cached"]
    )
    assert ran == ["evaluate/random/b16-s2", "finetune/random/b16-s2", "select/random/b16-s2"]
    assert result.table.column("seed").to_pylist() == [0, 1, 2]


def test_budget_not_below_the_training_pool_is_refused(bench_yaml, first_run, ray_local):
    cfg = load_bench_config(bench_yaml, ["bench.budgets=[96]"])
    with pytest.raises(ValueError, match=r"`bench.budgets` \[96\] are not below the 96"):
        run_bench(cfg, progress=False)


def test_a_method_missing_its_features_fails_before_any_arm_runs(bench_yaml, first_run, ray_local):
    cfg = load_bench_config(bench_yaml, ["bench.methods=[random, less]", "bench.seeds=[5]"])
    with pytest.raises(ValueError, match="bench method `less` cannot run on these features"):
        run_bench(cfg, progress=False)
    assert not (first_run / "select" / "random" / "b16-s5").exists()
    assert not (first_run / "select" / "less").exists()
