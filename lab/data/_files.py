"""Finding, verifying and downloading data files (shared by every loader in ``lab.data``).

Search order for a data set's files (thesis 3.3 names the data sets; this module only
makes them reproducible):

1. an explicit directory passed as ``path=`` (files directly in it, or in
   ``path/<dataset>/``);
2. ``$LAB_DATA_DIR/<dataset>/`` (CI points it at the read-only ``../shared/data``);
3. the user cache ``$LAB_CACHE_DIR/<dataset>/`` (default ``~/.cache/lab``, or
   ``$XDG_CACHE_HOME/lab``); the cache uses the same layout, so a cache directory is
   also a valid ``LAB_DATA_DIR``;
4. a download from the canonical mirrors into the cache.

Every copy, wherever found, is verified (sha256 and sizes) before use, so which copy
was used never changes the data; a present but corrupt copy is an error, never skipped.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from lab.progress import Progress


class DataError(ValueError):
    """A data file is missing, truncated, wrongly sized or does not match its checksum."""


class DataNotFoundError(DataError):
    """No copy of a data file was found and none could be downloaded."""


def cache_dir() -> Path:
    """The user cache: ``$LAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/lab``, else ``~/.cache/lab``."""
    env = os.environ.get("LAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lab"


def search_dirs(dataset: str, path: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The ``(origin, directory)`` pairs searched for ``dataset``, in order."""
    dirs: list[tuple[str, Path]] = []
    if path is not None:
        p = Path(path).expanduser()
        dirs += [("path", p), ("path", p / dataset)]
    env = os.environ.get("LAB_DATA_DIR")
    if env:
        dirs.append(("LAB_DATA_DIR", Path(env).expanduser() / dataset))
    dirs.append(("cache", cache_dir() / dataset))
    return dirs


def find_file(dataset: str, names: Iterable[str],
              path: str | os.PathLike | None = None) -> tuple[str, Path] | None:
    """The first existing file among ``names`` in the search directories, or None."""
    names = list(names)
    for origin, d in search_dirs(dataset, path):
        for name in names:
            f = d / name
            if f.is_file():
                return origin, f
    return None


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _default_opener(url: str):
    req = urllib.request.Request(url, headers={"User-Agent": "capsule-lab"})
    return urllib.request.urlopen(req, timeout=60)  # noqa: S310 (fixed https/file URLs)


def _content_length(response) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def download(urls: Iterable[str], dest: str | os.PathLike, check: Callable[[Path], object],
             opener: Callable | None = None, desc: str | None = None,
             progress: bool = True) -> Path:
    """Download the first URL that yields a valid file into ``dest``, atomically.

    ``opener(url)`` returns a binary file-like response usable in a ``with`` statement
    (default ``urllib``, which also serves ``file://`` URLs; tests pass a fake). Each
    try is written to a temporary file next to ``dest``, checked with
    ``check(tmp_path)`` (which raises ``DataError``) and only then renamed onto
    ``dest`` with ``os.replace``: an interrupted or invalid download never leaves a
    file under the final name. Raises ``DataNotFoundError`` listing every URL and why
    it failed.
    """
    dest = Path(dest)
    opener = opener or _default_opener
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, opener(url) as response:
                total = _content_length(response)
                with Progress(total, desc or f"download {dest.name}", unit="B",
                              stream=None if progress else io.StringIO()) as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
                if total is not None and out.tell() != total:
                    raise DataError(f"{url}: got {out.tell()} bytes, server announced {total}")
            check(tmp)
            os.replace(tmp, dest)
            return dest
        except Exception as exc:  # network errors, DataError from check: try the next mirror
            failures.append(f"  {url}: {type(exc).__name__}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataNotFoundError(f"could not download {dest.name} into {dest.parent}:\n"
                            + "\n".join(failures or ["  (no URLs)"]))


def save_npz_atomic(dest: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to a temporary file, then ``os.replace`` onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def not_found_message(what: str, dataset: str, path, extra: str = "") -> str:
    where = "\n".join(f"  {origin}: {d}" for origin, d in search_dirs(dataset, path))
    return (f"{what} not found; looked in:\n{where}\n"
            f"Set LAB_DATA_DIR, pass path=, or run `lab data fetch {dataset}` "
            f"(downloads into {cache_dir()}).{extra}")
