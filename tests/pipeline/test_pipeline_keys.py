"""Stage keys hold contents: stale inputs are detected, moved run dirs keep their cache."""

from __future__ import annotations

import os

from goracs_ray.config import load_config
from goracs_ray.data.prepare import input_key
from goracs_ray.models.config import model_fingerprint
from goracs_ray.pipeline import plan_run, run_arms_of


def test_an_input_file_edited_in_place_changes_the_prepare_key(tmp_path, make_toy_run_config):
    cfg = load_config(_toy(tmp_path, make_toy_run_config))
    before = input_key(cfg.data)
    inter = next((tmp_path / "toy").glob("*.inter"))
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-3]) + "\n")  # the same path, fewer interactions
    assert input_key(cfg.data) != before


def test_new_weights_at_the_same_path_change_the_model_fingerprint(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x00" * 1000)
    cache = tmp_path / "hashes.json"
    first = model_fingerprint(model, cache=cache)
    assert model_fingerprint(model, cache=cache) == first  # from the cache
    weights.write_bytes(b"\x01" * 1000)  # same size, new content
    os.utime(weights, ns=(1, 1))  # and an old timestamp: the cache must not hide it
    assert model_fingerprint(model, cache=cache) != first
    assert model_fingerprint(model) == model_fingerprint(model, cache=cache)


def test_keys_do_not_depend_on_where_the_run_dir_is(tmp_path, make_toy_run_config):
    config = _toy(tmp_path, make_toy_run_config)
    plans = []
    for where in ("a", "b/c"):
        cfg = load_config(config, [f"run_dir={tmp_path / where}"])
        plans.append({r.name: r.key for r in plan_run(cfg, run_arms_of(cfg))})
    assert plans[0] == plans[1]
    assert set(plans[0]) >= {"prepare", "model", "features", "select/goracs", "evaluate/random"}


def _toy(tmp_path, make_toy_run_config):
    """The toy run YAML (its RecBole files under ``tmp_path/toy``)."""
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_toy_run_config(tmp_path)))
    return path


def test_fine_tuning_early_stops_on_the_early_stop_split_when_one_is_set(tmp_path):
    from goracs_ray.data.config import DataConfig
    from goracs_ray.pipeline import stop_split

    assert stop_split(DataConfig()) == "valid.parquet"  # the reference: the valid split
    assert stop_split(DataConfig(early_stop_size=0.5)) == "early_stop.parquet"
    assert stop_split(DataConfig(early_stop_size=200)) == "early_stop.parquet"
