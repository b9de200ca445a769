"""MLflow tracking end to end on the toy run: `goracs run` twice (the second all cached) into a
file-backed MLflow store, read back with ``MlflowClient``; a run with tracking off logs nothing
and never imports MLflow. (`goracs bench` tracking: tests/pipeline/test_pipeline_bench.py.)"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from goracs_ray.cli import main
from goracs_ray.config import load_config
from goracs_ray.configutil import to_dict
from goracs_ray.tracking import flat_params

pytest.importorskip("mlflow")

EXPERIMENT = "toy"
_NOT_METRICS = {"n", "seconds", "task", "adapter_path"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, make_toy_run_config, ray_local):
    """The toy run (GORACS only), tracked, run twice (the second all cached). A tracked bench
    is tested on tests/pipeline/test_pipeline_bench.py's run."""
    root = tmp_path_factory.mktemp("tracking")
    uri = f"file://{root}/mlruns"
    cfg = make_toy_run_config(root)
    cfg["compare"] = []  # one fine-tune per invocation: the added test time stays small
    cfg["tracking"] = {"mlflow_uri": uri, "experiment": EXPERIMENT, "tensorboard": True}
    run_yaml = root / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(cfg))
    run_dir, reports = Path(cfg["run_dir"]), root / "run_reports"
    had_opt_in = "MLFLOW_ALLOW_FILE_STORE" in os.environ
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        assert main(["run", str(run_yaml)]) == 0
        assert main(["run", str(run_yaml)]) == 0  # every stage cached
        reports.mkdir()
        for name in ("results.md", "manifest.json", "config.yaml"):
            shutil.copy2(run_dir / name, reports / name)
    if not had_opt_in:  # the tracker opted into MLflow's file store
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"])
    return {
        "client": client,
        "runs": runs,
        "run_yaml": run_yaml,
        "run_dir": run_dir,
        "reports": reports,
        "experiment_id": experiment.experiment_id,
    }


def _parents(runs, command: str):
    return [
        r
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags and r.data.tags["goracs.command"] == command
    ]


def _children(runs, parent):
    rid = parent.info.run_id
    return {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == rid}


def _history(client, run, key):
    return [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


def _final_metrics(path: Path) -> dict[str, float]:
    metrics = json.loads(path.read_text())
    return {
        k.replace("@", "_at_"): float(v)
        for k, v in metrics.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float))
    }


def test_a_tracked_run_logs_config_trace_losses_metrics_and_reports(tracked, tmp_path):
    client, runs, run_dir = tracked["client"], tracked["runs"], tracked["run_dir"]
    reports = tracked["reports"]
    first, again = _parents(runs, "run")
    manifest = json.loads((reports / "manifest.json").read_text())
    cfg = load_config(reports / "config.yaml")
    for parent in (first, again):
        assert parent.info.status == "FINISHED"
        assert parent.info.run_name == "run"
        params = parent.data.params
        assert params == flat_params(to_dict(cfg))  # the resolved config, flattened
        assert params["select.lam"] == "0.5"
        assert params["select.budget"] == "16"
        assert params["compare"] == "[]"
        assert params["model.path"] == "null"
        assert params["tracking.experiment"] == EXPERIMENT
        assert parent.data.tags["goracs.config_hash"] == manifest["config_hash"]
        names = {f.path for f in client.list_artifacts(parent.info.run_id)}
        assert {"results.md", "results.parquet", "config.yaml", "manifest.json"} <= names
    assert first.data.tags["goracs.features.cached"] == "false"
    assert again.data.tags["goracs.features.cached"] == "true"
    assert manifest["mlflow"]["run_id"] == again.info.run_id  # the latest run wrote it
    got = client.download_artifacts(again.info.run_id, "results.md", str(tmp_path))
    assert Path(got).read_text() == (reports / "results.md").read_text()

    for parent in (first, again):
        children = _children(runs, parent)
        assert list(children) == ["goracs"]
        child = children["goracs"]
        assert child.info.status == "FINISHED"
        assert child.data.params["method"] == "goracs"
        assert child.data.params["budget"] == "16"
        cached = "true" if parent is again else "false"  # a re-run logs its cached results
        for stage in ("select", "finetune", "evaluate"):
            assert child.data.tags[f"goracs.{stage}.cached"] == cached
        # the selection trace: POO after greedy (step 0), then after each accepted swap
        trace = json.loads((run_dir / "select" / "goracs" / "selection_trace.json").read_text())
        (part,) = trace["info"]["parts"]
        assert len(part["poo_trace"]) >= 1
        assert _history(client, child, "poo") == list(enumerate(part["poo_trace"]))
        # per-epoch losses of fine-tuning
        epochs = json.loads((run_dir / "finetune" / "goracs" / "train_metrics.json").read_text())
        for key in ("train_loss", "valid_loss"):
            expected = [(e["epoch"], e[key]) for e in epochs["epochs"]]
            assert expected
            assert _history(client, child, key) == expected
        assert child.data.metrics["best_valid_loss"] == epochs["best_valid_loss"]
        # the final metrics equal metrics.json
        final = _final_metrics(run_dir / "evaluate" / "goracs" / "metrics.json")
        assert "ndcg_at_10" in final
        assert {k: child.data.metrics[k] for k in final} == final
        assert parent.data.metrics["goracs/ndcg_at_10"] == final["ndcg_at_10"]
        assert {f.path for f in client.list_artifacts(child.info.run_id)} == {
            "metrics.json",
            "train_metrics.json",
            "selection_trace.json",
        }


def test_tracking_off_logs_nothing_and_never_imports_mlflow(tracked, monkeypatch):
    from goracs_ray.pipeline import run_pipeline

    cfg = load_config(tracked["run_yaml"], ["tracking.mlflow_uri=null"])
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "mlflow", None)  # any `import mlflow` now fails
        result = run_pipeline(cfg)  # every stage cached
    assert all(rec.cached for rec in result.stages)
    client = tracked["client"]
    assert len(client.search_runs([tracked["experiment_id"]])) == len(tracked["runs"])
    assert "mlflow" not in json.loads((tracked["run_dir"] / "manifest.json").read_text())


def test_tensorboard_gets_the_arms_scalars_next_to_mlflow(tracked):
    """The same run wrote TensorBoard event files per arm (one per invocation), with the MLflow
    arm run's POO trace, per-epoch losses and final metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client, runs = tracked["client"], tracked["runs"]
    board = tracked["run_dir"] / "tensorboard" / "goracs"
    files = sorted(board.glob("events.out.tfevents.*"))
    assert len(files) >= 2  # one per invocation, the cached one too (other tests here add more)
    events = EventAccumulator(str(files[0]))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    arm = _children(runs, _parents(runs, "run")[0])["goracs"]
    assert {"poo", "train_loss", "valid_loss", "ndcg_at_10"} <= scalars
    assert scalars == set(arm.data.metrics)  # the same names as the MLflow arm run
    for key in ("poo", "train_loss"):
        steps, values = zip(*[(e.step, e.value) for e in events.Scalars(key)])
        want_steps, want_values = zip(*_history(client, arm, key))
        assert steps == want_steps
        assert values == pytest.approx(want_values, rel=1e-6)  # TensorBoard stores float32
