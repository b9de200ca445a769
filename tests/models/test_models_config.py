"""The one model section: validation, moved keys, device and DeepSpeed resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from goracs_ray.configutil import from_dict
from goracs_ray.models.config import ModelConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dtype": "int8"}, "model.dtype"),
        ({"device": "tpu"}, "model.device"),
        ({"deepspeed": 5}, "model.deepspeed"),
        ({"deepspeed": True}, "model.deepspeed"),
        ({"deepspeed": "missing.json"}, "model.deepspeed"),
    ],
)
def test_model_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        ModelConfig(**kwargs)


def test_model_and_adapter_dirs_are_checked_before_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path.*config.json"):
        ModelConfig(path=tmp_path).check_paths()
    with pytest.raises(FileNotFoundError, match="model.path.*config.json"):
        _ = ModelConfig(path=tmp_path).resolved_path
    with pytest.raises(FileNotFoundError, match="model.adapter_path.*adapter_config.json"):
        ModelConfig(adapter_path=tmp_path).check_paths()
    with pytest.raises(ValueError, match="model.path` is not set"):
        _ = ModelConfig().resolved_path
    ModelConfig().check_paths()  # the tiny model: nothing to check yet


@pytest.mark.parametrize(
    ("section", "key", "new"),
    [
        ("train", "lora", "model.lora"),
        ("train", "use_gpu", "model.device"),
        ("train", "deepspeed", "model.deepspeed"),
        ("train", "adapter_path", "model.adapter_path"),
        ("eval", "device", "model.device"),
        ("features", "tiny", "model.tiny"),
    ],
)
def test_old_keys_of_a_run_yaml_name_the_model_section(tmp_path, section, key, new):
    from goracs_ray.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ValueError, match=rf"`{section}\.{key}` has moved to `{re.escape(new)}`"):
        load_config(path)


def test_device_and_deepspeed_resolution():
    auto = ModelConfig()
    assert (auto.wants_gpu(True), auto.wants_gpu(False)) == (True, False)
    assert (auto.deepspeed_setting(True), auto.deepspeed_setting(False)) == (2, None)
    assert auto.features_zero_stage is None
    assert ModelConfig(device="cpu").wants_gpu(True) is False
    with pytest.raises(ValueError, match="no GPU is available"):
        ModelConfig(device="cuda").wants_gpu(False)
    staged = from_dict(ModelConfig, {"deepspeed": 3}, where="model")
    assert (staged.deepspeed_setting(False), staged.features_zero_stage) == (3, 3)
    assert ModelConfig(deepspeed=None).deepspeed_setting(True) is None


def test_user_deepspeed_json_is_a_path(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    model = ModelConfig(deepspeed=str(ds))
    assert model.deepspeed_setting(True) == Path(ds)
    assert model.features_zero_stage is None


def test_without_deepspeed_installed_auto_is_ddp_and_a_stage_is_refused(monkeypatch, caplog):
    import importlib.util
    import logging

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name)
    )
    with caplog.at_level(logging.WARNING):
        assert ModelConfig().deepspeed_setting(on_gpu=True) is None
    assert "goracs_ray[deepspeed]" in caplog.text
    with pytest.raises(ValueError, match=r"goracs_ray\[deepspeed\]"):
        ModelConfig(deepspeed=2).deepspeed_setting(on_gpu=False)
