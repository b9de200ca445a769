"""The run config: one YAML documents every option; unknown keys fail by dotted path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from goracs_ray.config import RunConfig, load_config
from goracs_ray.configutil import documented_yaml, to_dict

REFERENCE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "reference.yaml"


def test_reference_yaml_is_current_and_documents_every_option():
    text = documented_yaml(RunConfig())
    body = "\n".join(line for line in REFERENCE.read_text().splitlines()[2:])
    assert body.strip() == text.strip(), "regenerate: goracs config --documented"
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[a-z_]+:", line)]
    undocumented = [lines[i] for i in keys if not lines[i - 1].lstrip().startswith("#")]
    assert not undocumented
    assert to_dict(load_config(REFERENCE)) == to_dict(RunConfig())


def test_every_shipped_config_loads():
    import yaml

    from goracs_ray.bench import bench_arms, load_bench_config

    for path in sorted(REFERENCE.parent.glob("*.yaml")):
        if "bench" in (yaml.safe_load(path.read_text()) or {}):
            assert len(bench_arms(load_bench_config(path))) > 1
            assert len(bench_arms(load_bench_config(path, quick=True))) >= 1
        else:
            load_config(path)


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["select.lam=0.25", "compare=[random, grand]"])
    assert cfg.select.lam == 0.25
    assert cfg.methods == ["goracs", "random", "grand"]
    with pytest.raises(ValueError, match=r"select\.lamda"):
        load_config(None, ["select.lamda=0.3"])
    with pytest.raises(ValueError, match="compare"):
        load_config(None, ["compare=[goracs]"])
