"""Shared fixtures: one real local Ray cluster per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (4 logical CPUs on a 2-core box, so 0.5-CPU actors never starve reads)."""
    import ray

    from goracs_ray.raycluster import ensure_ray

    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()
