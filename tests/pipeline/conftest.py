"""A config file of the tiny-everything run (tests/conftest.py's `toy_run_config`) per module."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def toy_config_file(tmp_path_factory, make_toy_run_config) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(make_toy_run_config(root)))
    return path
