"""Bad input → one error naming the file, line/row or column and the fix; nothing left behind."""

from __future__ import annotations

import gzip
import logging

import pandas as pd
import pytest

from goracs_ray.configutil import from_dict
from goracs_ray.data import DataConfig, prepare


def _fails(tmp_path, source: dict, exc: type[Exception], pattern: str, **kw) -> None:
    cfg = from_dict(DataConfig, {"source": source, "num_negatives": 5, **kw})
    out = tmp_path / "out"
    with pytest.raises(exc, match=pattern):
        prepare(cfg, out, progress=False)
    assert not out.exists() or not any(out.iterdir())


def _lines(path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def test_missing_or_unknown_column(tmp_path, toy_source):
    src = toy_source("table-csv")
    src["columns"]["user"] = "customer"
    _fails(
        tmp_path,
        src,
        ValueError,
        r"events\.csv`: column `customer` \(`source\.columns\.user`\) not found; available: "
        r"`user`, `movie`, `stars`, `ts`\. Set `source\.columns\.user`",
    )
    src = toy_source("recbole")
    src["columns"] = {"title": "name"}
    _fails(tmp_path, src, ValueError, r"toy\.item`: column `name` \(`source\.columns\.title`\)")


def test_wrong_type_rating(tmp_path, toy, toy_source):
    events = toy[0].astype({"rating": object})
    events.loc[3, "rating"] = "five"
    src = toy_source("table-parquet", events=events.astype({"rating": str}))
    _fails(
        tmp_path,
        src,
        ValueError,
        r"events\.parquet` row 3: column `stars` value 'five' is not a number.*ratings must be",
    )


def test_non_numeric_timestamp(tmp_path, toy_source):
    src = toy_source("recbole")
    inter = tmp_path / "src-recbole" / "toy.inter"
    _lines(inter, lambda ls: ls.__setitem__(5, ls[5].rsplit("\t", 1)[0] + "\t2020-01-01"))
    _fails(
        tmp_path,
        src,
        ValueError,
        r"toy\.inter` line 6: column `timestamp` value '2020-01-01' is not a number "
        r"\(1 such rows\); timestamps \(unix seconds\) must be numeric",
    )


def test_empty_id(tmp_path, toy_source):
    src = toy_source("table-csv")
    _lines(tmp_path / "src-table-csv" / "events.csv", lambda ls: ls.__setitem__(2, "," + ls[2]))
    # the extra leading comma shifts the row: pandas reports it as unreadable
    _fails(tmp_path, src, ValueError, r"events\.csv` is unreadable or truncated.*line 3")
    src = toy_source("table-csv")
    path = tmp_path / "src-table-csv" / "events.csv"
    _lines(path, lambda ls: ls.__setitem__(4, "," + ls[4].split(",", 1)[1]))
    _fails(tmp_path, src, ValueError, r"events\.csv` line 5: column `user` is empty")


def test_items_without_titles(tmp_path, toy, toy_source, caplog):
    used = toy[0]["item_id"].iloc[0]
    items = toy[1].copy()
    items.loc[items["item_id"] == used, "title"] = ""
    src = toy_source("table-csv", items=items)
    _fails(
        tmp_path,
        src,
        ValueError,
        rf"items\.csv`: item `{used}` \(used at `.*events\.csv` line 2\) has no title.*"
        r"`source\.on_missing_title: drop`",
    )
    src["on_missing_title"] = "drop"
    cfg = from_dict(DataConfig, {"source": src, "num_negatives": 5})
    with caplog.at_level(logging.WARNING):
        out = prepare(cfg, tmp_path / "ok", progress=False)
    assert "without a title" in caplog.text
    assert used not in set(pd.read_parquet(out / "items.parquet")["item_id"])


def test_duplicate_interactions(tmp_path, toy, toy_source, caplog):
    events = pd.concat([toy[0], toy[0].iloc[[7]]], ignore_index=True)
    src = toy_source("recbole", events=events)
    _fails(
        tmp_path,
        src,
        ValueError,
        r"toy\.inter` line 114 repeats line 9 \(user `u0`.*`source\.on_duplicate: drop`",
    )
    src["on_duplicate"] = "drop"
    cfg = from_dict(DataConfig, {"source": src, "num_negatives": 5})
    with caplog.at_level(logging.WARNING):
        out = prepare(cfg, tmp_path / "ok", progress=False)
    assert "dropped 1 duplicate" in caplog.text
    assert (out / "train.parquet").is_file()


def test_empty_after_filtering(tmp_path, toy, toy_source):
    src = toy_source("amazon-2018")
    src["min_title_length"] = 100
    _fails(tmp_path, src, ValueError, r"no interactions left after filtering.*min_title_length")
    short = toy[0].groupby("user_id").head(2)
    src = toy_source("recbole", events=short)
    _fails(tmp_path, src, ValueError, r"toy\.inter`: no samples.*`min_history`", min_history=2)


@pytest.mark.parametrize("kind", ["amazon-2014", "amazon-2018"])
def test_truncated_gzip(tmp_path, toy_source, kind):
    src = toy_source(kind)
    path = tmp_path / f"src-{kind}" / src["path"].rsplit("/", 1)[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(tmp_path, src, ValueError, r"_5\.json\.gz` is unreadable or truncated")


def test_truncated_json_line_and_wrong_file(tmp_path, toy_source):
    src = toy_source("amazon-2018")
    meta = tmp_path / "src-amazon-2018" / "meta_Toys.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) - 20])
    _fails(tmp_path, src, ValueError, r"meta_Toys\.json` line 40: not a JSON object or Python dict")
    src = toy_source("amazon-2018")
    src["path"] = src["items_path"]
    _fails(tmp_path, src, ValueError, r"meta_Toys\.json` line 1: field `reviewerID` is missing")


def test_corrupt_parquet_and_truncated_recbole(tmp_path, toy_source):
    src = toy_source("table-parquet")
    path = tmp_path / "src-table-parquet" / "items.parquet"
    path.write_bytes(path.read_bytes()[:100])
    _fails(tmp_path, src, ValueError, r"items\.parquet` is unreadable or truncated")
    src = toy_source("recbole")
    inter = tmp_path / "src-recbole" / "toy.inter"
    inter.write_text(inter.read_text()[:-9])  # cut inside the last line's timestamp/rating
    _fails(tmp_path, src, ValueError, r"toy\.inter` line 113: column `timestamp`")


def test_missing_files_and_config_errors(tmp_path, toy_source):
    src = toy_source("table-csv")
    src["items_path"] = str(tmp_path / "nope.csv")
    _fails(tmp_path, src, FileNotFoundError, r"`source\.items_path`: file `.*nope\.csv` does not")
    with pytest.raises(ValueError, match=r"`source\.path` is required"):
        from_dict(DataConfig, {"source": {"kind": "recbole"}})
    with pytest.raises(ValueError, match=r"`source\.columns\.rating`"):
        from_dict(DataConfig, {"task": "ctr", "source": {"columns": {"rating": None}}})
    with pytest.raises(ValueError, match=r"`source\.kind`"):
        from_dict(DataConfig, {"source": {"kind": "movielens"}})


def test_gzip_is_read_for_csv(tmp_path, toy_source):
    """Compressed CSV works the same (and a truncated .csv.gz is reported, not half-read)."""
    src = toy_source("table-csv")
    plain = tmp_path / "src-table-csv" / "events.csv"
    gz = plain.with_name("events.csv.gz")
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    src["path"] = str(gz)
    cfg = from_dict(DataConfig, {"source": src, "num_negatives": 5})
    assert (prepare(cfg, tmp_path / "ok", progress=False) / "train.parquet").is_file()
    gz.write_bytes(gz.read_bytes()[:-30])
    _fails(tmp_path, src, ValueError, r"events\.csv\.gz` is unreadable or truncated")


def test_huge_timestamp_is_refused_not_wrapped(tmp_path, toy_source):
    src = toy_source("recbole")
    inter = tmp_path / "src-recbole" / "toy.inter"
    _lines(inter, lambda ls: ls.__setitem__(4, ls[4].rsplit("\t", 1)[0] + "\t1e30"))
    _fails(tmp_path, src, ValueError, r"toy\.inter` line \d+: column `timestamp.*1e30.*plausible")
