"""Every source format → identical samples; prepare's outputs, card, caching and Ray loading."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow.parquet as pq
import pytest

from goracs_ray.configutil import from_dict
from goracs_ray.data import ITEM_SCHEMA, SAMPLE_SCHEMA, DataConfig, prepare
from goracs_ray.data.cli import config_from_args
from goracs_ray.io import read_json

FORMATS = ["recbole", "ml-100k", "amazon-2014", "amazon-2018", "table-csv", "table-parquet"]


def _cfg(source: dict, **kw) -> DataConfig:
    return from_dict(DataConfig, {"source": source, "num_negatives": 5, **kw})


def _read(out, split):
    return pq.read_table(out / f"{split}.parquet")


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_every_source_format_gives_the_same_samples(tmp_path, toy_source, task):
    tables = {}
    for kind in FORMATS:
        out = prepare(_cfg(toy_source(kind), task=task), tmp_path / kind, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [
            "dataset_card.json",
            "items.parquet",
            "test.parquet",
            "train.parquet",
            "valid.parquet",
        ]
        assert not list(tmp_path.glob("**/*.part"))
        for split in ("train", "valid", "test"):
            assert _read(out, split).schema.equals(SAMPLE_SCHEMA)
        assert pq.read_table(out / "items.parquet").schema.equals(ITEM_SCHEMA)
        tables[kind] = {s: _read(out, s).to_pandas() for s in ("train", "valid", "test")}
    ref = tables["recbole"]
    # 8 users × (14 − 10) positions = 32 samples; 10 % valid/test → 3 each.
    assert [len(ref[s]) for s in ("train", "valid", "test")] == [26, 3, 3]
    for kind in FORMATS[1:]:
        for split in ref:
            pd.testing.assert_frame_equal(tables[kind][split], ref[split], obj=f"{kind}/{split}")


def test_parquet_datetime_and_tsv_gz_tables(tmp_path, toy_source, toy):
    ref = prepare(_cfg(toy_source("recbole")), tmp_path / "ref", progress=False)
    events = toy[0].assign(timestamp=pd.to_datetime(toy[0]["timestamp"], unit="s", utc=True))
    src = toy_source("table-parquet", events=events)
    out = prepare(_cfg(src), tmp_path / "dt", progress=False)
    assert _read(out, "test").equals(_read(ref, "test"))
    src = toy_source("table-csv")
    tsv = tmp_path / "events.tsv.gz"
    pd.read_csv(src["path"]).to_csv(tsv, sep="\t", index=False)
    out = prepare(_cfg({**src, "path": str(tsv)}), tmp_path / "tsv", progress=False)
    assert _read(out, "test").equals(_read(ref, "test"))


def test_seqrec_prompt_matches_bigrec(tmp_path, toy_source, toy):
    out = prepare(_cfg(toy_source("recbole")), tmp_path / "o", progress=False)
    train = _read(out, "train").to_pandas()
    row = train[train["sample_id"] == "seqrec:u0:10"].iloc[0]
    events = toy[0][toy[0]["user_id"] == "u0"].sort_values("timestamp")
    titles = [f"Film {int(i[1:])}" for i in events["item_id"]]
    assert row["instruction"] == (
        "Given a list of movies the user has watched before, please recommend a new movie that "
        "the user likes to the user."
    )
    assert row["input"] == "The user has watched the following movies before: " + ", ".join(
        f'"{t}"' for t in titles[:10]
    )
    assert row["output"] == f'"{titles[10]}"'
    assert list(row["history_items"]) == events["item_id"].tolist()[:10]
    assert row["target_item"] == events["item_id"].tolist()[10]
    assert pd.isna(row["label"])
    assert list(row["negatives"]) == []


def test_ctr_prompt_and_labels(tmp_path, toy_source, toy):
    out = prepare(_cfg(toy_source("recbole"), task="ctr", domain="games"), tmp_path / "o")
    samples = pd.concat([_read(out, s).to_pandas() for s in ("train", "valid", "test")])
    events = toy[0].set_index(["user_id", "item_id"])["rating"]
    for row in samples.itertuples():
        liked = events[(row.user, row.target_item)] > 3
        assert row.label == int(liked)
        assert row.output == ("Yes" if liked else "No")
        assert row.input.endswith(f'target video game "{row.target_title}"?')
        pref, unpref = row.input.split("\n")[:2]
        for item, title in zip(row.history_items, row.history_titles):
            assert f'"{title}"' in (pref if events[(row.user, item)] > 3 else unpref)
        assert list(row.negatives) == []


def test_no_leakage_and_split_counts(tmp_path, toy_source):
    out = prepare(
        _cfg(toy_source("recbole"), valid_size=5, test_size=0.25), tmp_path / "o", progress=False
    )
    train, valid, test = (_read(out, s).to_pandas() for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (19, 5, 8)
    assert valid["timestamp"].min() >= train["timestamp"].max()
    assert test["timestamp"].min() >= valid["timestamp"].max()
    ids = pd.concat([train, valid, test])["sample_id"]
    assert ids.is_unique


def test_final_block_split_draws_valid_like_test(tmp_path, toy_source):
    """`split: final_block`: train precedes both held-out sets, which share one period."""
    kw = {"valid_size": 8, "test_size": 8}
    out = prepare(_cfg(toy_source("recbole"), **kw), tmp_path / "t", progress=False)
    ref = {s: _read(out, s).to_pandas() for s in ("train", "valid", "test")}
    out = prepare(_cfg(toy_source("recbole"), split="final_block", **kw), tmp_path / "f",
                  progress=False)  # fmt: skip
    got = {s: _read(out, s).to_pandas() for s in ("train", "valid", "test")}
    assert {s: len(t) for s, t in got.items()} == {s: len(t) for s, t in ref.items()}
    assert sorted(got["train"].sample_id) == sorted(ref["train"].sample_id)
    held = sorted(pd.concat([got["valid"], got["test"]]).sample_id)
    assert held == sorted(pd.concat([ref["valid"], ref["test"]]).sample_id)
    assert (
        min(got["valid"].timestamp.min(), got["test"].timestamp.min())
        >= got["train"].timestamp.max()
    )
    # interleaved in time, unlike the reference split where all of test follows all of valid
    assert got["valid"].timestamp.max() > got["test"].timestamp.min()
    again = prepare(_cfg(toy_source("recbole"), split="final_block", **kw), tmp_path / "g",
                    progress=False)  # fmt: skip
    assert sorted(_read(again, "valid").to_pandas().sample_id) == sorted(got["valid"].sample_id)
    with pytest.raises(ValueError, match="split"):
        _cfg(toy_source("recbole"), split="random")


def test_early_stop_split_is_a_seeded_disjoint_part_of_valid(tmp_path, toy_source):
    """`early_stop_size`: that many valid samples move to `early_stop.parquet`; train and test
    are unchanged, valid and early_stop are disjoint and together the old valid split."""
    kw = {"valid_size": 8, "test_size": 8, "split": "final_block"}
    out = prepare(_cfg(toy_source("recbole"), **kw), tmp_path / "ref", progress=False)
    assert not (out / "early_stop.parquet").exists()  # the default: early stopping on valid
    ref = {s: _read(out, s).to_pandas() for s in ("train", "valid", "test")}
    got = {}
    for name, size in [("count", 3), ("fraction", 0.375), ("again", 3)]:
        out = prepare(_cfg(toy_source("recbole"), early_stop_size=size, **kw), tmp_path / name,
                      progress=False)  # fmt: skip
        got[name] = {s: _read(out, s).to_pandas() for s in [*ref, "early_stop"]}
    split = got["count"]
    assert len(split["early_stop"]) == 3
    assert len(split["valid"]) == 5
    assert not set(split["valid"].sample_id) & set(split["early_stop"].sample_id)
    assert sorted([*split["valid"].sample_id, *split["early_stop"].sample_id]) == sorted(
        ref["valid"].sample_id
    )
    for s in ("train", "test"):
        assert sorted(split[s].sample_id) == sorted(ref[s].sample_id)
    assert all(len(n) == 5 for n in split["early_stop"].negatives)  # scored like valid
    for name in ("fraction", "again"):  # 0.375 of 8 = 3; and the same seed, the same draw
        assert sorted(got[name]["early_stop"].sample_id) == sorted(split["early_stop"].sample_id)
    with pytest.raises(ValueError, match=r"`early_stop_size`=8 takes 8 of the 8 valid"):
        prepare(_cfg(toy_source("recbole"), early_stop_size=8, **kw), tmp_path / "all",
                progress=False)  # fmt: skip
    assert not (tmp_path / "all" / "samples").exists()
    with pytest.raises(ValueError, match=r"`early_stop_size` as a fraction must be in \[0, 1\)"):
        _cfg(toy_source("recbole"), early_stop_size=1.5)


def test_negatives_outside_whole_history_and_seeded(tmp_path, toy_source, toy):
    src = toy_source("recbole")
    a = prepare(_cfg(src), tmp_path / "a", progress=False)
    b = prepare(_cfg(src), tmp_path / "b", progress=False)
    c = prepare(_cfg(src, seed=7), tmp_path / "c", progress=False)
    history = toy[0].groupby("user_id")["item_id"].agg(set)
    catalog = set(toy[0]["item_id"])
    for split in ("valid", "test"):
        df = _read(a, split).to_pandas()
        for row in df.itertuples():
            negs = list(row.negatives)
            assert len(negs) == len(set(negs)) == 5
            assert not set(negs) & history[row.user]
            assert set(negs) <= catalog
        assert _read(a, split).equals(_read(b, split))
        assert not _read(a, split).column("negatives").equals(_read(c, split).column("negatives"))
    assert all(len(n) == 0 for n in _read(a, "train").column("negatives").to_pylist())


def test_caps_are_seeded_subsets(tmp_path, toy_source):
    src = toy_source("recbole")
    full = prepare(_cfg(src), tmp_path / "full", progress=False)
    ids = set(pd.concat([_read(full, s).to_pandas() for s in ("train", "valid", "test")]).sample_id)
    for name, kw, expect in [("u", {"max_users": 3}, 12), ("s", {"max_samples": 20}, 20)]:
        outs = [prepare(_cfg(src, **kw), tmp_path / f"{name}{i}", progress=False) for i in (0, 1)]
        got = [
            pd.concat([_read(o, s).to_pandas() for s in ("train", "valid", "test")]) for o in outs
        ]
        assert len(got[0]) == expect
        assert set(got[0].sample_id) <= ids
        assert got[0].sample_id.tolist() == got[1].sample_id.tolist()
    card = read_json(tmp_path / "u0" / "samples" / "dataset_card.json")
    assert card["kept"]["users"] == 3
    assert card["source"]["users"] == 8


def test_card_and_content_hash_caching(tmp_path, toy_source, toy):
    cfg = _cfg(toy_source("recbole"))
    out = prepare(cfg, tmp_path, progress=False)
    card = read_json(out / "dataset_card.json")
    assert card["splits"]["train"]["samples"] == 26
    assert card["source"]["interactions"] == 112
    n_items = toy[0]["item_id"].nunique()
    assert card["kept"] == {"users": 8, "items": n_items, "interactions": 112}
    assert pq.read_table(out / "items.parquet").num_rows == n_items
    assert card["splits"]["valid"]["history_length_max"] == 10
    assert set(card["schema"]) == set(SAMPLE_SCHEMA.names)
    assert len(card["source"]["files"]) == 2
    stamp = (out / "train.parquet").stat().st_mtime_ns
    assert prepare(cfg, tmp_path, progress=False) == out  # same inputs + config: no-op
    assert (out / "train.parquet").stat().st_mtime_ns == stamp
    other = dataclasses.replace(cfg, history_length=5)
    with pytest.raises(FileExistsError, match="--force"):
        prepare(other, tmp_path, progress=False)
    prepare(other, tmp_path, force=True, progress=False)
    assert read_json(out / "dataset_card.json")["content_hash"] != card["content_hash"]
    # Changing the input file's content changes the hash too.
    inter = next((tmp_path / "src-recbole").glob("*.inter"))
    inter.write_text(inter.read_text().replace("\t5\t", "\t4\t", 1))
    with pytest.raises(FileExistsError, match="other inputs"):
        prepare(other, tmp_path, progress=False)


def test_cli_prepare_with_yaml_and_flags(tmp_path, toy_source):
    import yaml

    from goracs_ray.cli import build_parser, main

    src = toy_source("table-csv")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"source": src, "num_negatives": 3}}))
    args = build_parser().parse_args(
        ["prepare", "--config", str(cfg_file), "--task", "ctr", "--set", "history_length=4"]
    )
    cfg = config_from_args(args)
    assert (cfg.task.value, cfg.history_length, cfg.num_negatives) == ("ctr", 4, 3)
    assert main(["prepare", "--config", str(cfg_file), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "samples" / "train.parquet").is_file()
    bad = ["prepare", "--config", str(cfg_file), "--set", "source.columns.user=nope"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_ray_reads_prepared_samples(tmp_path, toy_source, ray_local):
    from goracs_ray.data import load_samples_ray

    out = prepare(_cfg(toy_source("recbole")), tmp_path, progress=False)
    ds = load_samples_ray(tmp_path, "train", num_blocks=4).materialize()
    assert ds.num_blocks() == 4
    rows = ds.take_all()
    assert len(rows) == 26
    assert ds.schema().names == SAMPLE_SCHEMA.names
    expected = _read(out, "train").to_pandas().sort_values("sample_id")
    got = pd.DataFrame(rows).sort_values("sample_id")
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()
    assert got["input"].tolist() == expected["input"].tolist()
    assert load_samples_ray(out, "items").count() == pq.read_table(out / "items.parquet").num_rows
    with pytest.raises(ValueError, match="`split`"):
        load_samples_ray(out, "dev")


def test_split_sizes_rules():
    from goracs_ray.data.samples import split_sizes

    assert split_sizes(100, 0.1, 0.1) == (80, 10, 10)
    assert split_sizes(100, 5, 0.25) == (70, 5, 25)
    assert split_sizes(7, 0.01, 0) == (6, 1, 0)
    with pytest.raises(ValueError, match="`valid_size`"):
        split_sizes(10, 5, 5)
    with pytest.raises(ValueError, match="`test_size`"):
        DataConfig(test_size=1.5)


def test_item_descriptions_hold_year_and_genres_only(tmp_path):
    """ml-100k-style item columns become the catalog text of the tiny base model."""
    from goracs_ray.data.config import ColumnMap
    from goracs_ray.data.sources import item_descriptions

    items = pd.DataFrame(
        {
            "item_id": ["1", "2", "3"],
            "movie_title": ["Toy Story", "Heat", "Fargo"],
            "release_year": ["1995", "", "1996"],
            "class": ["Animation Comedy", "Action", ""],
        }
    )
    titles = pd.Series(["Toy Story", "Heat", "Fargo"], index=["1", "2", "3"])
    cols = ColumnMap(title="movie_title", year="release_year", genres="class")
    text = item_descriptions(items, tmp_path / "x.item", cols, titles)
    assert text.tolist() == ["Toy Story (1995), Animation Comedy", "Heat, Action", "Fargo (1996)"]
    assert item_descriptions(items, tmp_path / "x.item", ColumnMap(), titles) is None
    with pytest.raises(ValueError, match="source.columns.genres"):
        item_descriptions(items, tmp_path / "x.item", ColumnMap(genres="genre"), titles)
