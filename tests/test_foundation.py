"""Foundation: typed config loading, atomic artifacts, the CLI router, Ray-free core imports."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from goracs_ray.configutil import apply_overrides, from_dict, to_dict
from goracs_ray.io import atomic_dir, read_json, write_json, write_parquet


class Mode(str, enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass
class Inner:
    k: int = 1
    mode: Mode = Mode.A


@dataclasses.dataclass
class Outer:
    name: str = "x"
    lam: float = 0.5
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: list[str] = dataclasses.field(default_factory=list)
    path: Path | None = None


def test_from_dict_builds_nested_and_coerces():
    cfg = from_dict(Outer, {"lam": 1, "inner": {"mode": "b"}, "tags": ["t"], "path": "/tmp/p"})
    assert cfg.lam == 1.0
    assert isinstance(cfg.lam, float)
    assert cfg.inner.mode is Mode.B
    assert cfg.path == Path("/tmp/p")
    assert to_dict(cfg) == {
        "name": "x",
        "lam": 1.0,
        "inner": {"k": 1, "mode": "b"},
        "tags": ["t"],
        "path": "/tmp/p",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"kk": 2}}, "inner.kk"),
        ({"inner": {"k": "two"}}, "inner.k"),
        ({"inner": {"mode": "c"}}, "inner.mode"),
        ({"lam": True}, "lam"),
    ],
)
def test_from_dict_names_the_bad_key(data, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        from_dict(Outer, data)


def test_apply_overrides_parses_yaml_values():
    data = apply_overrides({"inner": {"k": 1}}, ["inner.k=3", "lam=0.1", "tags=[a, b]"])
    assert data == {"inner": {"k": 3}, "lam": 0.1, "tags": ["a", "b"]}


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"

    def write_then_fail() -> None:
        with atomic_dir(target) as part:
            (part / "half.txt").write_text("x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as part:
        (part / "a.txt").write_text("1")
    with pytest.raises(FileExistsError, match="--overwrite"), atomic_dir(target):
        pass
    with atomic_dir(target, overwrite=True) as part:
        (part / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_json_and_parquet_roundtrip(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    write_json(tmp_path / "t.json", {"a": np.float32(1.5), "b": np.arange(2), "m": Mode.B})
    assert read_json(tmp_path / "t.json") == {"a": 1.5, "b": [0, 1], "m": "b"}
    write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2]}))
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == [1, 2]
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


# The functional core: everything except the Ray shells (features/actors.py, select/distributed.py,
# train/finetune.py + worker.py, data/ray_io.py, raycluster.py, api.py, pipeline.py).
RAY_FREE_MODULES = [
    "goracs_ray",
    "goracs_ray.configutil",
    "goracs_ray.io",
    "goracs_ray.results",
    "goracs_ray.stats",
    "goracs_ray.bench.config",
    "goracs_ray.stages",
    "goracs_ray.data",
    "goracs_ray.data.amazon",
    "goracs_ray.data.cli",
    "goracs_ray.data.config",
    "goracs_ray.data.fetch",
    "goracs_ray.data.prepare",
    "goracs_ray.data.prompts",
    "goracs_ray.data.samples",
    "goracs_ray.data.schema",
    "goracs_ray.data.sources",
    "goracs_ray.models.lm",
    "goracs_ray.models.losses",
    "goracs_ray.models.synthetic",
    "goracs_ray.models.text",
    "goracs_ray.models.tiny",
    "goracs_ray.features.compute",
    "goracs_ray.features.config",
    "goracs_ray.features.embed",
    "goracs_ray.features.grads",
    "goracs_ray.features.llama_forward",
    "goracs_ray.features.projection",
    "goracs_ray.select",
    "goracs_ray.select.baselines",
    "goracs_ray.select.cost",
    "goracs_ray.select.greedy",
    "goracs_ray.select.itra",
    "goracs_ray.select.ot",
    "goracs_ray.select.refine",
    "goracs_ray.select.sharded",
    "goracs_ray.evaluate.grounding",
    "goracs_ray.evaluate.likelihood",
    "goracs_ray.evaluate.metrics",
    "goracs_ray.evaluate.model_eval",
    "goracs_ray.evaluate.run",
    "goracs_ray.train.config",
    "goracs_ray.train.core",
    "goracs_ray.train.ds_config",
]


def test_core_modules_do_not_import_ray():
    """The functional core must stay Ray-free (STYLE rule 1): one fresh interpreter imports all."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in RAY_FREE_MODULES)
        + "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "goracs_ray.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("data", "prepare", "features", "model", "select", "finetune", "evaluate",
                    "run", "config", "bench"):  # fmt: skip
        assert f"    {command} " in out.stdout, command


def test_cli_loads_only_the_command_being_run():
    """`goracs select` must not pay for torch (≈ 300 MB RSS) or Ray pulled in by other stages."""
    code = (
        "import sys\n"
        "from goracs_ray.cli import build_parser\n"
        "args = build_parser('select').parse_args(['select', '--budget', '3', '--out', 'x'])\n"
        "assert args.command == 'select'\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')]\n"
        "assert not heavy, heavy[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
