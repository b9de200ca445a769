"""Properties every registered baseline must have: exact budgets, determinism, clear errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from goracs_ray.select import available_selectors, get_selector, run_selector
from goracs_ray.select.baselines import BASELINE_NAMES
from goracs_ray.select.baselines._common import check_budget

# method -> (fields to drop, fragment the error must contain); None: needs only embeddings.
MISSING = {
    "random": None,
    "kcenter": None,
    "moderate": None,
    "stratified_user": ({"train_groups": None}, "train_groups['user']"),
    "stratified_popularity": ({"train_groups": {"user": None}}, "train_groups['item']"),
    "grand": ({"grad_norms": None}, "`grad_norms`"),
    "el2n": ({"train_losses": None}, "`train_losses`"),
    "ccs": ({"grad_norms": None}, "`grad_norms`"),
    "d2": ({"grad_norms": None}, "`grad_norms`"),
    "dealrec": ({"grad_norms": None}, "`grad_norms`"),
    "less": ({"train_grad_proj": None, "valid_grad_proj": None}, "`train_grad_proj`"),
}


def test_all_baselines_are_registered():
    assert set(BASELINE_NAMES) <= set(available_selectors())
    assert set(MISSING) == set(BASELINE_NAMES)


@pytest.mark.parametrize("name", BASELINE_NAMES)
@pytest.mark.parametrize("n", [1, 2, 17, 61])
def test_budget_exact_unique_and_ids(name, n, features, fast_opts):
    sel = run_selector(name, features, n, seed=5, **fast_opts.get(name, {}))
    assert sel.method == name
    assert sel.indices.dtype == np.int64
    assert sel.indices.shape == (n,)
    assert len(np.unique(sel.indices)) == n
    assert sel.indices.min() >= 0
    assert sel.indices.max() < features.n_train
    np.testing.assert_array_equal(sel.ids, features.train_ids[sel.indices])
    json.dumps(sel.info)  # the trace must be JSON-serialisable
    assert sel.info["seed"] == 5


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_deterministic_under_seed(name, features, fast_opts):
    opts = fast_opts.get(name, {})
    first = run_selector(name, features, 13, seed=11, **opts)
    again = run_selector(name, features, 13, seed=11, **opts)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.info == again.info


@pytest.mark.parametrize(
    "name", ["random", "stratified_user", "stratified_popularity", "ccs", "kcenter", "dealrec"]
)
def test_seeded_methods_depend_on_the_seed(name, features, fast_opts):
    opts = fast_opts.get(name, {})
    sets = {
        frozenset(run_selector(name, features, 13, seed=s, **opts).indices.tolist())
        for s in range(4)
    }
    assert len(sets) > 1


@pytest.mark.parametrize("name", BASELINE_NAMES)
@pytest.mark.parametrize("n", [0, -1, 62])
def test_budget_out_of_range_is_a_clear_error(name, n, features):
    with pytest.raises(ValueError, match=r"`budget` must be in \[1, N=61\]"):
        run_selector(name, features, n, seed=0)
    with pytest.raises(ValueError, match=r"`budget` must be in \[1, N=61\]"):
        get_selector(name)(features, n, seed=0)


def test_budget_must_be_an_integer(features):
    with pytest.raises(TypeError, match="`budget` must be an integer"):
        check_budget(features, 2.0)
    with pytest.raises(TypeError, match="`budget` must be an integer"):
        check_budget(features, True)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_missing_feature_is_a_clear_error(name, build_features, fast_opts):
    spec = MISSING[name]
    if spec is None:  # embeddings alone suffice: a bare table works
        bare = build_features()
        bare = dataclasses.replace(
            bare,
            grad_norms=None,
            train_losses=None,
            train_labels=None,
            valid_labels=None,
            train_grad_proj=None,
            valid_grad_proj=None,
            train_groups=None,
        )
        assert run_selector(name, bare, 5, seed=0).size == 5
        return
    drop, fragment = spec
    overrides = {}
    for field, value in drop.items():
        if isinstance(value, dict):  # keep only the named group keys
            full = build_features().train_groups
            overrides[field] = {key: full[key] for key in value}
        else:
            overrides[field] = None
    broken = build_features(**overrides)
    with pytest.raises(ValueError, match=f"method `{name}` needs") as err:
        run_selector(name, broken, 5, seed=0, **fast_opts.get(name, {}))
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("name", "opts", "field"),
    [
        ("less", {"reduce": "median"}, "reduce"),
        ("ccs", {"score": "entropy"}, "score"),
        ("ccs", {"beta": 1.0}, "beta"),
        ("ccs", {"n_bins": 0}, "n_bins"),
        ("d2", {"k": 0}, "k"),
        ("d2", {"gamma_reverse": -1.0}, "gamma_reverse"),
        ("dealrec", {"lam": -0.5}, "lam"),
        ("dealrec", {"epochs": 0}, "epochs"),
        ("stratified_popularity", {"n_bins": 0}, "n_bins"),
    ],
)
def test_bad_option_names_the_option(name, opts, field, features):
    with pytest.raises(ValueError, match=f"`{field}`"):
        run_selector(name, features, 5, seed=0, **opts)


def test_unknown_option_is_rejected(features):
    with pytest.raises(TypeError):
        run_selector("grand", features, 5, seed=0, beta=0.1)
    with pytest.raises(TypeError, match="unknown option"):
        run_selector("dealrec", features, 5, seed=0, bogus=1)
