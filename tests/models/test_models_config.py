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


def _hub_cache(root: Path, repo: str, model_dir: Path) -> Path:
    """The HF cache layout huggingface_hub writes for ``repo`` at ``main``: a snapshot of
    ``model_dir`` under ``models--owner--name/snapshots/<commit>``."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    return snapshot


def test_a_hub_repo_id_resolves_to_its_snapshot_and_an_unknown_one_names_the_fix(
    tmp_path, monkeypatch, tiny_model_dir
):
    import huggingface_hub.constants as hub

    from goracs_ray.models.config import is_hub_id

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # the cache only: no network in tests
    snapshot = _hub_cache(tmp_path / "hub", "goracs-test/tiny-llama", tiny_model_dir)
    monkeypatch.chdir(tmp_path)

    model = from_dict(ModelConfig, {"path": "goracs-test/tiny-llama"})
    model.check_paths()
    assert model.resolved_path == snapshot
    assert model.local_path == snapshot
    assert is_hub_id("goracs-test/tiny-llama")
    (tmp_path / "goracs-test" / "tiny-llama").mkdir(parents=True)
    assert not is_hub_id("goracs-test/tiny-llama")  # a local dir of that name wins
    for local in ("/abs/dir", "./a/b", "a/b/c"):
        assert not is_hub_id(local)

    missing = from_dict(ModelConfig, {"path": "goracs-test/not-cached"})
    with pytest.raises(FileNotFoundError, match=r"model.path.*goracs-test/not-cached.*HF_TOKEN"):
        missing.check_paths()
