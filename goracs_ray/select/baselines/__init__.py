"""Baseline selection methods, registered on import (``goracs select --method NAME``).

Registered names: ``random``, ``stratified_user``, ``stratified_popularity``, ``grand``, ``el2n``,
``ccs``, ``d2``, ``kcenter``, ``moderate``, ``dealrec``, ``less``. Pure numpy (+ torch for the
DEALRec surrogate); no Ray. See docs/baselines.md.
"""

from goracs_ray.select.baselines.ccs import select_ccs
from goracs_ray.select.baselines.d2 import select_d2
from goracs_ray.select.baselines.dealrec import select_dealrec
from goracs_ray.select.baselines.geometry import covering_radius, select_kcenter, select_moderate
from goracs_ray.select.baselines.scores import select_el2n, select_grand, select_less
from goracs_ray.select.baselines.uniform import (
    select_random,
    select_stratified_popularity,
    select_stratified_user,
)

BASELINE_NAMES = (
    "ccs",
    "d2",
    "dealrec",
    "el2n",
    "grand",
    "kcenter",
    "less",
    "moderate",
    "random",
    "stratified_popularity",
    "stratified_user",
)
"""Registry names of all baselines in this package."""

__all__ = [
    "BASELINE_NAMES",
    "covering_radius",
    "select_ccs",
    "select_d2",
    "select_dealrec",
    "select_el2n",
    "select_grand",
    "select_kcenter",
    "select_less",
    "select_moderate",
    "select_random",
    "select_stratified_popularity",
    "select_stratified_user",
]
