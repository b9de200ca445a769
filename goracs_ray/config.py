"""The run configuration: one YAML with a section per stage (``goracs run config.yaml``).

Every section is the stage's own config dataclass, so a stage can also be run alone with the
same YAML section (``goracs prepare``, ``goracs features``, ``goracs select``, …).
``load_config`` rejects unknown keys by dotted path and applies ``section.key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goracs_ray.configutil import apply_overrides, from_dict, load_yaml
from goracs_ray.data.config import DataConfig
from goracs_ray.evaluate.config import EvalConfig
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.models.config import ModelConfig
from goracs_ray.select.config import SelectConfig
from goracs_ray.tracking import TrackingConfig
from goracs_ray.train.config import TrainConfig

__all__ = [
    "ModelConfig",
    "RayConfig",
    "RunConfig",
    "TrackingConfig",
    "load_config",
    "read_model",
    "read_section",
    "split_overrides",
]


@dataclasses.dataclass
class RayConfig:
    """Where the stages run."""

    address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:10001``). ``None``: ``$RAY_ADDRESS`` (set by
    ``ray job submit``) or an embedded local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of the embedded local Ray (default max(4, cores))."""


@dataclasses.dataclass
class RunConfig:
    """A full run: prepare → model → features → select → finetune → evaluate → report."""

    run_dir: str = "runs/default"
    """Where every stage's artifacts, manifest.json and results.md go: a local directory, or a
    ``pyarrow.fs`` URI (``s3://bucket/prefix``, ``gs://…``) to which each finished stage is
    published under a commit marker (docs/operations.md, "Object storage")."""
    staging_dir: Path | None = None
    """With a URI ``run_dir``: the local directory stages are built in (default
    ``~/.cache/goracs_ray/staging/<hash of run_dir>``). On a multi-node cluster it must be on
    storage every node mounts, as the feature actors write their shards there."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Interaction source and sample building (``goracs prepare``)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The base model and its LoRA adapter, dtype, device and DeepSpeed choice: one section
    read by features, fine-tuning and evaluation."""
    features: FeaturesConfig = dataclasses.field(default_factory=FeaturesConfig)
    """Embeddings and gradient norms (``goracs features``); the model comes from ``model``."""
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    """The coreset selection method and budget (``goracs select``)."""
    compare: list[str] = dataclasses.field(default_factory=lambda: ["random"])
    """Further selection methods run side by side with the same budget and seed (baselines)."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """LoRA fine-tuning on Ray Train (``goracs finetune``)."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Test-set evaluation (``goracs evaluate``)."""
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    """Cluster connection."""
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    """Optional MLflow experiment tracking of `goracs run` and `goracs bench` (off by default)."""

    def __post_init__(self) -> None:
        import goracs_ray.select  # noqa: F401  (registers every baseline)

        self.run_dir = os.fspath(self.run_dir)  # a URI must not go through Path ("s3:/b/x")
        from goracs_ray.select.registry import available_selectors

        methods = [self.select.method, *self.compare]
        if len(set(methods)) != len(methods):
            raise ValueError(
                f"`compare` repeats a method ({methods}); list each selection method once"
            )
        known = available_selectors()
        unknown = [m for m in methods if m not in known]
        if unknown:  # at load, before any stage runs
            raise ValueError(
                f"unknown selection method(s) {unknown} in `select.method`/`compare`; choose "
                f"from {', '.join(known)}"
            )

    @property
    def methods(self) -> list[str]:
        """Selection methods of this run: ``select.method`` first, then ``compare``."""
        return [self.select.method, *self.compare]


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """Read a run YAML (or the defaults when ``path`` is None) and apply ``a.b=value`` overrides.

    Raises
    ------
    ValueError
        Unknown keys or bad values, naming their dotted path (e.g. ``select.lamda``).
    """
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    return from_dict(RunConfig, data)


_SECTION_ALIASES = {"eval": ("eval", "evaluate")}
"""Run-YAML sections that stage commands also accept under another name."""


def read_section(
    path: str | os.PathLike[str] | None, section: str, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """One stage's settings from a YAML: its ``section:`` of a run YAML, or a stage YAML.

    A run YAML (top-level keys are run sections: ``data``, ``train``, …) gives its ``section:``
    mapping, or ``{}`` (the defaults) when it has none; any other YAML holds the stage's fields
    at its top level. ``section`` is the run YAML's name (``eval``, not ``evaluate``; both are
    read). ``a.b=value`` overrides are applied on top.
    """
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    for name in _SECTION_ALIASES.get(section, (section,)):
        if name in data and (data[name] is None or isinstance(data[name], dict)):
            return apply_overrides(dict(data[name] or {}), list(overrides))
    run_sections = {f.name for f in dataclasses.fields(RunConfig)} | {"bench"}
    if data and set(data) <= run_sections:
        data = {}  # a run YAML without this section
    return apply_overrides(dict(data), list(overrides))


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """A stage command's ``--set`` values: (the stage's own, the ``model.*`` ones unprefixed)."""
    stage = [o for o in overrides if not o.startswith("model.")]
    model = [o.removeprefix("model.") for o in overrides if o.startswith("model.")]
    return stage, model


def read_model(
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str] = (),
    *,
    model_path: str | os.PathLike[str] | None = None,
) -> ModelConfig:
    """The ``model:`` section of a run YAML (defaults when absent) for a stage command, with
    ``overrides`` (``lora.r=16``) applied and ``model_path`` (a ``--model`` flag) as ``path``."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    section = dict(data["model"]) if isinstance(data.get("model"), dict) else {}
    apply_overrides(section, list(overrides))
    if model_path is not None:
        section["path"] = os.fspath(model_path)
    return from_dict(ModelConfig, section, where="model")
