"""The `tracking:` section without Ray: validated at load, off by default, MLflow names, and one
clear error when tracking is on but MLflow is not installed."""

from __future__ import annotations

import sys

import pytest
import yaml

from goracs_ray.cli import main
from goracs_ray.config import RunConfig, load_config
from goracs_ray.tracking import flat_params, metric_name


def test_tracking_is_off_by_default_and_validated_at_load():
    assert not RunConfig().tracking.enabled
    assert RunConfig().tracking.experiment == "goracs"
    cfg = load_config(None, ["tracking.mlflow_uri=file:///tmp/mlruns", "tracking.experiment=x"])
    assert cfg.tracking.enabled
    assert (cfg.tracking.mlflow_uri, cfg.tracking.experiment) == ("file:///tmp/mlruns", "x")
    with pytest.raises(ValueError, match=r"`tracking.mlflow_uri` must be a non-empty URI"):
        load_config(None, ["tracking.mlflow_uri=''"])
    with pytest.raises(ValueError, match=r"`tracking.experiment` must be a non-empty"):
        load_config(None, ["tracking.experiment=' '"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) `tracking.uri`"):
        load_config(None, ["tracking.uri=http://x"])
    with pytest.raises(ValueError, match=r"`tracking.mlflow_uri`: 5 fits none of"):
        load_config(None, ["tracking.mlflow_uri=5"])


def test_config_flattens_to_dotted_params_and_metric_names_suit_mlflow():
    nested = {"a": {"b": 1, "c": None, "d": [1, "x"], "e": {}}, "s": "text", "f": 0.5}
    assert flat_params(nested) == {
        "a.b": "1",
        "a.c": "null",
        "a.d": '[1, "x"]',
        "a.e": "{}",
        "s": "text",
        "f": "0.5",
    }
    assert metric_name("ndcg@10") == "ndcg_at_10"
    assert metric_name("grounded_hr@5") == "grounded_hr_at_5"
    assert metric_name("poo/1") == "poo/1"
    assert metric_name("a+b") == "a_b"


def _yaml(tmp_path, **sections) -> str:
    path = tmp_path / "run.yaml"
    data = {"run_dir": str(tmp_path / "run"), "tracking": {"mlflow_uri": "file:///tmp/x"}}
    path.write_text(yaml.safe_dump({**data, **sections}))
    return str(path)


def test_tracking_without_mlflow_is_one_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow-skinny were not installed
    assert main(["run", _yaml(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'goracs_ray[tracking]'" in err
    assert err.startswith("goracs run: error: `tracking.mlflow_uri` is set but MLflow is not")
    assert not (tmp_path / "run").exists()  # before any stage (and before Ray starts)

    bench = _yaml(tmp_path, bench={"methods": ["random"], "budgets": [8], "seeds": [0]})
    assert main(["bench", bench]) == 2
    assert "pip install 'goracs_ray[tracking]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unusable_uri_fails_before_any_work_and_a_failed_run_ends_failed(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    path = _yaml(tmp_path, tracking={"mlflow_uri": "nosuchscheme://x"})
    assert main(["run", path]) == 2
    assert "tracking: cannot start an MLflow run in experiment 'goracs' at `nosuchscheme://x`" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()

    uri = f"file://{tmp_path}/mlruns"
    missing = tmp_path / "no_model"  # refused by the run before Ray starts
    path = _yaml(tmp_path, tracking={"mlflow_uri": uri}, model={"path": str(missing)})
    assert main(["run", path]) == 2
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("goracs").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.params["model.path"] == str(missing)
