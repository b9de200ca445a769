"""`BenchConfig`: a run YAML plus a ``bench:`` section (methods × budgets × seeds)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from goracs_ray.config import RunConfig
from goracs_ray.configutil import apply_overrides, from_dict, load_yaml, set_dotted
from goracs_ray.results import FULL_DATA

__all__ = [
    "DEFAULT_METHODS",
    "FULL_DATA",
    "POO_RANDOM",
    "BenchConfig",
    "BenchSettings",
    "MethodSpec",
    "PooCorrelation",
    "load_bench_config",
]

DEFAULT_METHODS = (
    "random",
    "stratified_user",
    "stratified_popularity",
    "grand",
    "el2n",
    "ccs",
    "d2",
    "kcenter",
    "moderate",
    "dealrec",
    "less",
    "goracs_greedy",
    "goracs",
)
"""Every registered selection method, baselines first (docs/baselines.md)."""


POO_RANDOM = "poo_random"
"""Row label of the extra random coresets of the POO-correlation study."""

POO_RANDOM_SEED = 1000
"""Selection seed of the first ``poo_random`` coreset."""


@dataclasses.dataclass
class MethodSpec:
    """One benchmarked method: a registry method under a row label, with its options."""

    name: str
    """Row label in the results (e.g. ``goracs_faithful``); unique within ``bench.methods``."""
    method: str | None = None
    """Registry name (default: ``name``)."""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword options of the method (e.g. ``{epochs: 50}`` for dealrec); for GORACS methods
    they override the ``select:`` section (e.g. ``{estimator: faithful}``)."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (FULL_DATA, POO_RANDOM):
            raise ValueError(
                f"`bench.methods` name {self.name!r} must be non-empty, without '/', and not "
                f"{FULL_DATA!r} (reserved for the full-data row) or {POO_RANDOM!r} (the POO "
                "study's random coresets)"
            )
        self.method = self.method or self.name


@dataclasses.dataclass
class PooCorrelation:
    """The method's premise, measured: POO of many coresets against their fine-tuned losses."""

    random_subsets: int = 20
    """Extra random coresets (row ``poo_random``, seeds 1000, 1001, …) at ``budget``, each
    fine-tuned with the first bench seed; with every method's coresets at that budget they are
    the points of the rank correlation."""
    budget: int | None = None
    """Coreset size of the study (None: the first of ``bench.budgets``)."""

    def __post_init__(self) -> None:
        if self.random_subsets < 0:
            raise ValueError(
                f"`bench.poo_correlation.random_subsets` must be ≥ 0, got {self.random_subsets}"
            )


@dataclasses.dataclass
class BenchSettings:
    """What `goracs bench` compares: every method × budget × seed, plus a full-data row."""

    methods: list[str | MethodSpec] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_METHODS)
    )
    """Selection methods: registry names, or ``{name, method, options}`` for variants."""
    budgets: list[int] = dataclasses.field(default_factory=lambda: [1024])
    """Coreset sizes n at which every method runs."""
    headroom_budgets: list[int] = dataclasses.field(default_factory=list)
    """Further sizes at which only ``random`` runs: with ``budgets`` and ``full_data`` they show
    whether more data helps at all (the headroom a selection method needs)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    """Seeds; each arm uses its seed for both the selection and the fine-tuning."""
    full_data: bool = True
    """Also fine-tune on the whole training split (one row per seed): the reference."""
    full_data_epochs: int | None = None
    """Epoch cap of the full-data arms (None: ``train.epochs``, as every other arm). The
    full-data fine-tune is by far the longest arm; capped while its valid loss still falls, its
    row is a lower bound on what full data reaches, so headroom it shows is there at least."""
    parallel_arms: int = 2
    """Arms (select → fine-tune → evaluate chains) run at the same time. Ray Train start-up is
    mostly waiting, so 2 overlap well even on a 2-core machine; use more on a cluster."""
    metric: str | None = None
    """Headline metric (plots, "vs random" table); None: ``ndcg@10`` (SeqRec) or ``auc`` (CTR)."""
    poo_correlation: PooCorrelation | None = None
    """Rank correlation of POO with the fine-tuned valid/test loss and the headline metric
    (None: not measured)."""
    quick: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Overrides applied by ``goracs bench --quick`` (dotted keys, e.g. ``data.max_users: 30``):
    a CI-sized smoke run of the same benchmark, written to ``<run_dir>-quick``."""

    def __post_init__(self) -> None:
        self.methods = [MethodSpec(m) if isinstance(m, str) else m for m in self.methods]
        names = [m.name for m in self.methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"`bench.methods` must be non-empty with unique names, got {names}")
        for field, values, low in (("budgets", self.budgets, 1), ("seeds", self.seeds, 0)):
            if not values or len(set(values)) != len(values) or min(values) < low:
                raise ValueError(
                    f"`bench.{field}` must be a non-empty list of distinct integers ≥ {low}, "
                    f"got {values}"
                )
        if self.headroom_budgets and (
            len(set(self.headroom_budgets)) != len(self.headroom_budgets)
            or min(self.headroom_budgets) < 1
            or set(self.headroom_budgets) & set(self.budgets)
        ):
            raise ValueError(
                f"`bench.headroom_budgets` must be distinct integers ≥ 1 not in `bench.budgets`, "
                f"got {self.headroom_budgets}"
            )
        if self.full_data_epochs is not None and self.full_data_epochs < 1:
            raise ValueError(
                f"`bench.full_data_epochs` must be ≥ 1 or null, got {self.full_data_epochs}"
            )
        if self.headroom_budgets and "random" not in [m.name for m in self.methods]:
            raise ValueError("`bench.headroom_budgets` needs `random` among `bench.methods`")
        study = self.poo_correlation
        if study is not None and study.budget is not None and study.budget not in self.budgets:
            raise ValueError(
                f"`bench.poo_correlation.budget` ({study.budget}) must be one of "
                f"`bench.budgets` {self.budgets}"
            )
        if self.parallel_arms < 1:
            raise ValueError(f"`bench.parallel_arms` must be ≥ 1, got {self.parallel_arms}")

    @property
    def poo_budget(self) -> int | None:
        """Coreset size of the POO-correlation study (None without one)."""
        if self.poo_correlation is None:
            return None
        return self.poo_correlation.budget or self.budgets[0]

    @property
    def specs(self) -> list[MethodSpec]:
        """``methods`` as :class:`MethodSpec` (plain names are normalised on load)."""
        return [m for m in self.methods if isinstance(m, MethodSpec)]


@dataclasses.dataclass
class BenchConfig(RunConfig):
    """A benchmark: the run sections (data, model, features, select, train, eval, ray) shared by
    every arm, and ``bench`` saying which arms. ``select:`` holds the GORACS settings (``lam``,
    ``max_iters``, …); its method, budget, seed and options come from ``bench``."""

    bench: BenchSettings = dataclasses.field(default_factory=BenchSettings)
    """Methods × budgets × seeds."""


# Run-config keys that `bench` decides; setting them in a bench YAML is a mistake worth naming.
_SET_BY_BENCH = {"compare": "bench.methods"} | {
    f"select.{k}": f"bench.{v}"
    for k, v in {
        "method": "methods",
        "budget": "budgets",
        "seed": "seeds",
        "options": "methods",
    }.items()
}


def load_bench_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, quick: bool = False
) -> BenchConfig:
    """Read a bench YAML; ``quick`` applies its ``bench.quick`` overrides and a ``-quick`` run dir.

    Raises
    ------
    ValueError
        Unknown keys, bad values, run keys that ``bench`` sets (``compare``, ``select.budget``…),
        or ``quick`` without a ``bench.quick`` section.
    """
    data: dict[str, Any] = load_yaml(path)
    for key, instead in _SET_BY_BENCH.items():
        section, _, name = key.rpartition(".")
        if name in ((data.get(section) or {}) if section else data):
            raise ValueError(f"`{key}` is set by `{instead}` in a bench config; remove it")
    if quick:
        fast = (data.get("bench") or {}).get("quick") or {}
        if not fast:
            raise ValueError(f"`--quick` needs a `bench.quick` section of overrides in `{path}`")
        for key, value in fast.items():
            set_dotted(data, key, value)
        data["run_dir"] = f"{data.get('run_dir', RunConfig.run_dir)}-quick"
    apply_overrides(data, list(overrides))
    return from_dict(BenchConfig, data)
