"""A run directory on object storage, against a real S3-compatible server started by the test
(moto's server on loopback), through the URI code path a user takes: `run_dir: s3://…` in the
YAML, credentials and endpoint in the environment as pyarrow reads them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

BUCKET = "goracs-runs"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 server on 127.0.0.1 with one bucket; the AWS_* environment pointing at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=endpoint).create_dir(BUCKET)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _s3():
    return pafs.FileSystem.from_uri(f"s3://{BUCKET}")[0]


def _upload(local: Path, key: str) -> None:
    pafs.copy_files(str(local), f"{BUCKET}/{key}", destination_filesystem=_s3())


def _remote_json(path: str) -> dict:
    with _s3().open_input_stream(f"{BUCKET}/{path}") as f:
        return json.loads(f.read().decode())


def test_a_run_on_s3_publishes_every_stage_and_a_fresh_machine_reuses_them(
    s3_endpoint, ray_local, tmp_path, monkeypatch, make_toy_run_config
):
    from goracs_ray.config import load_config
    from goracs_ray.pipeline import plan_run, run_arms_of, run_pipeline

    monkeypatch.chdir(tmp_path)
    cfg = make_toy_run_config(tmp_path)
    _upload(Path(cfg["data"]["source"]["path"]), "inputs/toy")  # the interactions in the bucket
    cfg["data"]["source"]["path"] = f"s3://{BUCKET}/inputs/toy"
    cfg["data"]["source"]["cache_dir"] = str(tmp_path / "input-cache")
    cfg["run_dir"] = f"s3://{BUCKET}/toy"
    cfg["staging_dir"] = str(tmp_path / "machine-a")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    first = run_pipeline(load_config(tmp_path / "run.yaml"))

    assert not (tmp_path / "s3:").exists()  # never a local folder named after the URI
    for record in first.stages:  # every stage published, its commit marker holding its key
        assert _remote_json(f"toy/{record.name}/_stage.json")["key"] == record.key
    local = json.loads((tmp_path / "machine-a" / "manifest.json").read_text())
    assert _remote_json("toy/manifest.json") == local
    arm = first.arms[0]
    coreset = f"s3://{BUCKET}/toy/select/{arm.method}/coreset.parquet"
    assert pq.read_table(coreset).num_rows == 16  # readable by any pyarrow client, as is
    with _s3().open_input_stream(f"{BUCKET}/toy/results.md") as f:
        assert "goracs run: toy" in f.read().decode()

    # Another machine (an empty staging dir): every stage comes from the bucket, none is built.
    other = load_config(tmp_path / "run.yaml", [f"staging_dir={tmp_path / 'machine-b'}"])
    assert all(r.cached for r in plan_run(other, run_arms_of(other)))
    second = run_pipeline(other)
    assert [r.cached for r in second.stages] == [True] * len(first.stages)
    assert [r.seconds for r in second.stages] == [r.seconds for r in first.stages]
    assert [a.metrics for a in second.arms] == [a.metrics for a in first.arms]


def test_a_stage_without_its_commit_marker_is_never_read_and_a_new_key_replaces_it(
    s3_endpoint, tmp_path
):
    from goracs_ray.storage import open_mirror

    mirror = open_mirror(f"s3://{BUCKET}/protocol")
    stage = tmp_path / "run" / "select"
    stage.mkdir(parents=True)
    (stage / "old.txt").write_text("from key a")
    (stage / "_stage.json").write_text(json.dumps({"key": "a"}))
    assert mirror.push_stage("select", "a", stage)
    assert not mirror.push_stage("select", "a", stage)  # already published: nothing uploaded
    assert mirror.pull_stage("select", "a", tmp_path / "pulled" / "select")
    assert (tmp_path / "pulled" / "select" / "old.txt").read_text() == "from key a"

    # An upload cut off before its marker: the files are there, the stage is not trusted.
    _s3().delete_file(f"{BUCKET}/protocol/select/_stage.json")
    assert mirror.marker_key("select") is None
    assert not mirror.pull_stage("select", "a", tmp_path / "elsewhere" / "select")
    assert not (tmp_path / "elsewhere" / "select").exists()

    # Rebuilt under another key: the old stage's files are gone from the bucket.
    (stage / "old.txt").unlink()
    (stage / "new.txt").write_text("from key b")
    (stage / "_stage.json").write_text(json.dumps({"key": "b"}))
    assert mirror.push_stage("select", "b", stage)
    selector = pafs.FileSelector(f"{BUCKET}/protocol/select", recursive=True)
    names = sorted(i.base_name for i in _s3().get_file_info(selector) if i.is_file)
    assert names == ["_stage.json", "new.txt"]


def test_a_bucket_run_dir_from_an_older_format_is_refused(s3_endpoint, tmp_path):
    """The format check reads the remote copy's markers too: a bucket run made by the previous
    layout (markers without ``format``) is refused though the local staging dir is empty."""
    from goracs_ray.stages import RUN_FORMAT, StaleRunDirError, check_run_format
    from goracs_ray.storage import open_mirror

    mirror = open_mirror(f"s3://{BUCKET}/formats")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "_stage.json").write_text(json.dumps({"key": "k", "format": RUN_FORMAT}))
    mirror.push_stage("select/goracs", "k", stage)
    check_run_format(tmp_path / "staging", mirror)  # the current format: accepted
    assert mirror.markers() == {"select/goracs": {"key": "k", "format": RUN_FORMAT}}

    (stage / "_stage.json").write_text(json.dumps({"key": "old"}))
    mirror.push_stage("features", "old", stage)
    with pytest.raises(StaleRunDirError, match=r"s3://goracs-runs/formats/features/_stage\.json"):
        check_run_format(tmp_path / "staging", mirror)
    check_run_format(tmp_path / "staging", mirror, force=True)  # --force: rebuilt in place


def test_a_uri_that_cannot_be_opened_fails_before_any_work(s3_endpoint, tmp_path):
    from goracs_ray.storage import open_mirror

    with pytest.raises(ValueError, match=r"run_dir: s3://no-such-bucket/x.*AWS_ENDPOINT_URL"):
        open_mirror("s3://no-such-bucket/x")
    with pytest.raises(ValueError, match=r"run_dir: nosuchscheme://x"):
        open_mirror("nosuchscheme://x")


def test_an_input_uri_is_fetched_once_and_again_when_it_changes(s3_endpoint, tmp_path):
    from goracs_ray.data.config import SourceConfig, SourceKind
    from goracs_ray.data.sources import source_files

    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "e.csv").write_text("user_id,item_id,rating,timestamp\nu1,i1,5,1\n")
    (folder / "i.csv").write_text("item_id,title\ni1,Film\n")
    _upload(folder, "fetch/events")
    uri = f"s3://{BUCKET}/fetch/events"
    source = SourceConfig(
        kind=SourceKind.TABLE,
        path=f"{uri}/e.csv",
        items_path=f"{uri}/i.csv",
        cache_dir=tmp_path / "c",
    )
    inter, items = source_files(source)
    assert inter.read_text() == (folder / "e.csv").read_text()
    assert items.read_text() == "item_id,title\ni1,Film\n"
    stamp = inter.stat().st_mtime_ns
    assert source_files(source)[0].stat().st_mtime_ns == stamp  # unchanged: not fetched again

    (folder / "e.csv").write_text("user_id,item_id,rating,timestamp\nu1,i1,4,2\nu2,i1,3,3\n")
    _upload(folder / "e.csv", "fetch/events/e.csv")
    assert source_files(source)[0].read_text() == (folder / "e.csv").read_text()

    missing = SourceConfig(kind=SourceKind.TABLE, path=f"{uri}/nope.csv", items_path=f"{uri}/i.csv")
    with pytest.raises(FileNotFoundError, match=r"source.path.*nope.csv.*does not exist"):
        source_files(missing)


def test_a_model_uri_is_copied_into_the_cache_and_loads(
    s3_endpoint, tmp_path, monkeypatch, tiny_model_dir
):
    from goracs_ray.configutil import from_dict
    from goracs_ray.models.config import ModelConfig
    from goracs_ray.models.lm import load_causal_lm

    monkeypatch.setenv("GORACS_CACHE_DIR", str(tmp_path / "cache"))
    _upload(tiny_model_dir, "models/tiny")
    model = from_dict(ModelConfig, {"path": f"s3://{BUCKET}/models/tiny"})
    assert model.path == f"s3://{BUCKET}/models/tiny"  # not folded into a local `s3:/…` path
    model.check_paths()
    local = model.resolved_path
    assert local.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in local.iterdir()) == sorted(
        p.name for p in tiny_model_dir.iterdir()
    )
    lm, tokenizer = load_causal_lm(local)
    assert lm.config.vocab_size == len(tokenizer)
