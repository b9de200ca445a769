"""`goracs bench`: selection methods × budgets × seeds, fine-tuned and evaluated side by side."""

from goracs_ray.bench.config import BenchConfig, BenchSettings, MethodSpec, load_bench_config
from goracs_ray.bench.run import BenchResult, bench_arms, run_bench

__all__ = [
    "BenchConfig",
    "BenchResult",
    "BenchSettings",
    "MethodSpec",
    "bench_arms",
    "load_bench_config",
    "run_bench",
]
