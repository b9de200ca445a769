"""One registry for interchangeable selection methods (GORACS and every baseline).

Every method has the signature ``(features: FeatureTable, n: int, *, seed: int, **opts) ->
Selection`` and is chosen by name (``goracs select --method NAME``, ``select.method`` in YAML).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from goracs_ray.select.types import FeatureTable, Selection

__all__ = ["SelectorFn", "available_selectors", "get_selector", "register_selector", "run_selector"]


class SelectorFn(Protocol):
    """A selection method."""

    def __call__(self, features: FeatureTable, n: int, *, seed: int, **opts: Any) -> Selection: ...


_SELECTORS: dict[str, SelectorFn] = {}


def register_selector(name: str) -> Callable[[SelectorFn], SelectorFn]:
    """Decorator adding a method to the registry under ``name`` (lower-case, unique)."""

    def decorator(fn: SelectorFn) -> SelectorFn:
        if name in _SELECTORS:
            raise ValueError(f"selection method `{name}` is already registered")
        _SELECTORS[name] = fn
        return fn

    return decorator


def available_selectors() -> list[str]:
    """Sorted names of all registered methods."""
    return sorted(_SELECTORS)


def get_selector(name: str) -> SelectorFn:
    """The method registered as ``name``; ValueError listing the choices otherwise."""
    try:
        return _SELECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown selection method `{name}`; choose one of: {', '.join(available_selectors())}"
        ) from None


def run_selector(
    name: str, features: FeatureTable, n: int, *, seed: int = 0, **opts: Any
) -> Selection:
    """Validate the budget, run method ``name`` and check its output (exactly n unique rows)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"`budget` must be an integer, got {n!r}")
    if not 0 < n <= features.n_train:
        raise ValueError(
            f"`budget` must be in [1, N={features.n_train}] (the training pool size), got {n}"
        )
    selection = get_selector(name)(features, int(n), seed=seed, **opts)
    indices = selection.indices
    if indices.shape != (n,) or len(np.unique(indices)) != n:
        raise AssertionError(f"method `{name}` returned {indices.shape} rows, not {n} unique")
    return selection
