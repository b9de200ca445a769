"""Coreset selection: GORACS (POO + ITRA) and baselines behind one registry. No Ray inside."""

from goracs_ray.select import baselines  # noqa: F401  (registers the baseline methods)
from goracs_ray.select.itra import CoresetResult, select_coreset
from goracs_ray.select.registry import (
    available_selectors,
    get_selector,
    register_selector,
    run_selector,
)
from goracs_ray.select.types import FeatureTable, Selection

__all__ = [
    "CoresetResult",
    "FeatureTable",
    "Selection",
    "available_selectors",
    "get_selector",
    "register_selector",
    "run_selector",
    "select_coreset",
]
