"""Object storage through one filesystem layer (``pyarrow.fs``): ``run_dir`` and input URIs.

``run_dir`` may be a local path or any URI ``pyarrow.fs.FileSystem.from_uri`` opens
(``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``; credentials and endpoint as pyarrow reads them,
e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` or ``s3://bucket/x?endpoint_override=host:9000``).
With a URI, stages run in a local *staging* directory (``staging_dir``) and every finished stage
is mirrored to the URI; a run on another machine pulls the finished stages it needs back.

Object stores have no atomic rename, so a stage is published with a **commit marker**:

1. if ``<uri>/<stage>/_stage.json`` already holds this stage's key, nothing is done;
2. otherwise the old marker is deleted first, then everything under ``<uri>/<stage>/``;
3. every file of the stage is uploaded;
4. the marker (``_stage.json`` with the stage key) is uploaded **last**.

A reader trusts a stage only when its marker holds the key it wants, so a crash at any step
leaves a stage that is either complete or ignored (and re-published by the next run), never a
half-uploaded one that is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["RunMirror", "fetch_input", "is_uri", "local_run_dir", "open_mirror"]

logger = logging.getLogger(__name__)

MARKER = "_stage.json"
"""A stage's commit marker (the same file :mod:`goracs_ray.stages` writes locally)."""


def is_uri(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` names a filesystem URI (``scheme://…``) rather than a local path."""
    return path is not None and "://" in os.fspath(path)


def default_staging_dir(uri: str) -> Path:
    """``$XDG_CACHE_HOME/goracs_ray/staging/<hash of uri>`` (``~/.cache`` by default)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return root / "goracs_ray" / "staging" / digest


def local_run_dir(
    run_dir: str | os.PathLike[str], staging_dir: str | os.PathLike[str] | None
) -> Path:
    """The local directory stages write into: ``run_dir`` itself, or for a URI its staging dir."""
    if is_uri(run_dir):
        return Path(staging_dir or default_staging_dir(os.fspath(run_dir))).resolve()
    return Path(run_dir).resolve()


@dataclasses.dataclass(frozen=True)
class RunMirror:
    """The remote copy of a run directory: ``filesystem`` and the ``base`` path inside it."""

    uri: str
    """The ``run_dir`` URI as given."""
    filesystem: pafs.FileSystem
    base: str
    """Path of the run directory inside ``filesystem`` (``bucket/prefix`` for S3)."""

    def _remote(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def _read_marker(self, path: str) -> dict | None:
        """The commit marker at ``path`` in the filesystem; None if absent or unreadable."""
        try:
            with self.filesystem.open_input_stream(path) as f:
                marker = json.loads(f.read().decode())
        except (OSError, json.JSONDecodeError):
            return None
        return marker if isinstance(marker, dict) else None

    def marker_key(self, name: str) -> str | None:
        """Key in the remote commit marker of stage ``name``; None if the stage is not there."""
        marker = self._read_marker(self._remote(f"{name}/{MARKER}"))
        return None if marker is None else marker.get("key")

    def markers(self) -> dict[str, dict]:
        """Every commit marker of the remote copy: ``{stage name: marker contents}``."""
        try:
            infos = _files_under(self.filesystem, self.base)
        except (FileNotFoundError, OSError):
            return {}
        out: dict[str, dict] = {}
        for info in infos:
            if info.base_name != MARKER:
                continue
            name = info.path[len(self.base) + 1 : -len(MARKER) - 1]
            out[name] = self._read_marker(info.path) or {}  # unreadable: the oldest format
        return out

    def pull_stage(self, name: str, key: str, local: Path) -> bool:
        """Download stage ``name`` into ``local`` when the remote copy is complete for ``key``
        and ``local`` does not already hold that key. Returns whether it downloaded."""
        marker = local / MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
            return False
        if self.marker_key(name) != key:
            return False
        part = local.with_name(f".{local.name}.pull")
        shutil.rmtree(part, ignore_errors=True)
        part.parent.mkdir(parents=True, exist_ok=True)
        remote = self._remote(name)
        _download(self.filesystem, _files_under(self.filesystem, remote), remote, part)
        if self.marker_key(name) != key:  # republished while we read: do not trust the copy
            shutil.rmtree(part, ignore_errors=True)
            return False
        if local.exists():
            shutil.rmtree(local)
        os.replace(part, local)
        logger.info("stage %s: pulled from %s (key %s)", name, self.uri, key)
        return True

    def push_stage(self, name: str, key: str, local: Path) -> bool:
        """Publish the finished stage in ``local`` under the commit-marker protocol (module
        docstring). Returns whether it uploaded (False: the remote copy already has ``key``)."""
        if self.marker_key(name) == key:
            return False
        remote = self._remote(name)
        try:
            self.filesystem.delete_file(f"{remote}/{MARKER}")
        except (FileNotFoundError, OSError):
            pass
        self.filesystem.create_dir(remote, recursive=True)
        self.filesystem.delete_dir_contents(remote, missing_dir_ok=True)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MARKER)
        self._upload(local, remote, files)
        self._upload(local, remote, [local / MARKER])  # last: the commit
        logger.info("stage %s: published to %s", name, self.uri)
        return True

    def push_files(self, local_dir: Path, names: Iterable[str]) -> None:
        """Upload the run's top-level files ``names`` (config.yaml, manifest.json, results.md,
        plots) from ``local_dir``, each replacing its remote copy."""
        self._upload(
            local_dir, self.base, [local_dir / n for n in names if (local_dir / n).is_file()]
        )

    def _upload(self, root: Path, remote: str, files: Iterable[Path]) -> None:
        local_fs = pafs.LocalFileSystem()
        for path in files:
            target = f"{remote}/{path.relative_to(root).as_posix()}"
            self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(
                str(path),
                target,
                source_filesystem=local_fs,
                destination_filesystem=self.filesystem,
            )


def _files_under(filesystem: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """Every file below directory ``path`` (recursive)."""
    selector = pafs.FileSelector(path, recursive=True)
    return [i for i in filesystem.get_file_info(selector) if i.is_file]


def _download(
    filesystem: pafs.FileSystem, files: Iterable[pafs.FileInfo], root: str, local: Path
) -> None:
    """Copy ``files`` (below ``root`` in ``filesystem``) to the same relative paths in ``local``."""
    local_fs = pafs.LocalFileSystem()
    for info in files:
        target = local / info.path[len(root.rstrip("/")) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            info.path, str(target), source_filesystem=filesystem, destination_filesystem=local_fs
        )


def open_mirror(run_dir: str | os.PathLike[str]) -> RunMirror | None:
    """The :class:`RunMirror` of a ``run_dir`` URI (None for a local path).

    Raises
    ------
    ValueError
        The URI names no filesystem pyarrow can open, or the storage cannot be reached.
    """
    if not is_uri(run_dir):
        return None
    uri = os.fspath(run_dir).rstrip("/")
    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
        filesystem.create_dir(base, recursive=True)
        filesystem.get_file_info(base)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ValueError(
            f"`run_dir: {uri}`: cannot open it through pyarrow.fs ({e}). Use a URI pyarrow "
            "supports (s3://bucket/prefix, gs://bucket/prefix, hdfs://…) with its credentials "
            "(for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a "
            "non-AWS endpoint), or a local path"
        ) from e
    return RunMirror(uri=uri, filesystem=filesystem, base=base.rstrip("/"))


def fetch_input(uri: str, cache_dir: str | os.PathLike[str], *, field: str) -> Path:
    """A local copy of the input file or directory at ``uri`` (e.g. ``data.source.path:
    s3://bucket/events.parquet``), kept in ``cache_dir/inputs/<hash of uri>/`` and downloaded
    again only when a remote file's size or modification time changed. Readers then hash its
    contents as for any local input.

    Raises
    ------
    FileNotFoundError
        Nothing at ``uri``, naming ``field``.
    ValueError
        The URI cannot be opened, naming ``field``.
    """
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise ValueError(f"`{field}` `{uri}`: cannot open it through pyarrow.fs ({e})") from e
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"`{field}` `{uri}` does not exist; check the bucket and key")
    files = [info] if info.is_file else _files_under(filesystem, path)
    stamp = {i.path: [i.size, i.mtime_ns] for i in files}
    home = Path(cache_dir) / "inputs" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = home / path.rstrip("/").rsplit("/", 1)[-1]
    record = home / "_source.json"
    wanted = {"uri": uri, "files": stamp}
    if target.exists() and record.is_file() and json.loads(record.read_text()) == wanted:
        return target
    part = home / ".part"
    shutil.rmtree(part, ignore_errors=True)
    _download(filesystem, files, path.rstrip("/").rsplit("/", 1)[0] if info.is_file else path, part)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(part / target.name if info.is_file else part, target)
    shutil.rmtree(part, ignore_errors=True)
    record.write_text(json.dumps(wanted))
    logger.info("%s: fetched %s (%d file(s))", field, uri, len(files))
    return target
