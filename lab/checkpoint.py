"""Checkpoints: one ``.npz`` per save, written atomically, verified on load.

A checkpoint holds arrays (parameters, optimizer slots) and a JSON ``meta`` dict
(config, step, RNG states, optimizer scalars, ...). Design:

* **No pickle, ever**: arrays are saved by ``np.savez`` and read with
  ``allow_pickle=False``; object arrays are refused on both sides. ``meta`` is strict
  JSON (no NaN) stored as the uint8 array ``__meta__`` (UTF-8 bytes).
* **Atomic**: the file is written to a temp file in the same directory, flushed,
  fsync'ed and moved over the target with ``os.replace``; a crash at any point leaves
  either the old checkpoint or the new one, never a torn file, and no temp file.
* **Verified**: the stored meta carries a format name/version, the array names,
  dtypes and shapes, and a sha256 over all array contents; ``load_checkpoint`` checks
  them all, so truncation, bit flips and foreign ``.npz`` files raise
  ``CheckpointError`` naming the file and the problem.
* **A NaN is never checkpointed** (issue 3): a non-finite array or meta value raises
  ``NonFiniteError`` naming it, before anything touches the disk.

Arrays may be CuPy: they are copied to the host with ``lab.backend.to_numpy``.
Nested dicts of arrays are flattened to ``"a/b/c"`` names (``flatten`` / ``unflatten``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lab.backend import to_numpy

FORMAT_NAME = "capsule-lab-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"
SEP = "/"
#: ``step_checkpoint_path`` names: ``ckpt-000001234.npz``.
_STEP_RE = re.compile(r"^ckpt-(\d+)\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, truncated, corrupted or not ours."""


class NonFiniteError(ValueError):
    """Refused to checkpoint a NaN or Inf (the message names the array or meta key)."""


# -- nested names -----------------------------------------------------------------------
def flatten(nested: Mapping[str, Any], sep: str = SEP, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; non-dict values are leaves.

    Keys may already contain ``sep`` (parameter names like ``"encoder/W"`` inside a
    ``{"params": ...}`` dict); ``unflatten`` then nests them one level deeper.
    """
    out: dict[str, Any] = {}
    for key, value in nested.items():
        key = str(key)
        if not key or key.startswith(sep) or key.endswith(sep) or sep + sep in key:
            raise ValueError(f"name {prefix + key!r}: empty path part")
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"empty dict at {prefix + key!r} cannot be flattened")
            out.update(flatten(value, sep, prefix + key + sep))
        else:
            out[prefix + key] = value
    return out


def unflatten(flat: Mapping[str, Any], sep: str = SEP) -> dict[str, Any]:
    """The inverse of ``flatten``: ``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(sep)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"name {name!r} runs through the leaf {p!r}")
        if leaf in node:
            raise ValueError(f"name {name!r} is both a leaf and a group")
        node[leaf] = value
    return out


def split_arrays(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split e.g. an optimizer ``state_dict`` into (arrays, JSON-able scalars)."""
    arrays = {k: v for k, v in d.items() if hasattr(v, "shape") and hasattr(v, "dtype")
              and not isinstance(v, np.generic)}
    scalars = {k: (v.item() if isinstance(v, np.generic) else v)
               for k, v in d.items() if k not in arrays}
    return arrays, scalars


# -- content checksum ---------------------------------------------------------------------
def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, a.dtype.str, list(a.shape)])
        h.update(len(header).to_bytes(8, "little"))
        h.update(header.encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _prepare(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = flatten(arrays) if any(isinstance(v, Mapping) for v in arrays.values()) else dict(arrays)
    out = {}
    for name, value in flat.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"bad array name {name!r} (names starting with '__' are reserved)")
        if name.split(SEP)[-1] == "" or "\\" in name:
            raise ValueError(f"bad array name {name!r}")
        if _is_tensor(value):
            value = value.data
        a = np.asarray(to_numpy(value))
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object: checkpoints hold no pickles")
        if a.dtype.kind in "fc":
            bad = ~np.isfinite(a)
            if bad.any():
                n_nan = int(np.isnan(a).sum())
                raise NonFiniteError(f"refusing to checkpoint array {name!r}: {n_nan} NaN and "
                                     f"{int(bad.sum()) - n_nan} Inf among {a.size} values")
        out[name] = a
    return out


def _is_tensor(value) -> bool:
    return type(value).__name__ == "Tensor" and hasattr(value, "grad")


def _jsonable(value, where: str):
    """numpy scalars/arrays -> Python; NaN/Inf -> NonFiniteError naming the key."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise NonFiniteError(f"refusing to checkpoint non-finite meta value {where} = {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"meta value {where} of type {type(value).__name__} is not JSON-able")


# -- save / load ------------------------------------------------------------------------
def save_checkpoint(path, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``arrays`` (flat ``"a/b"`` names or nested dicts; numpy, CuPy or Tensors) and
    JSON ``meta`` to ``path`` atomically. Returns the path.

    Raises ``NonFiniteError`` for any NaN/Inf (arrays or meta) before writing anything.
    """
    path = Path(path)
    prepared = _prepare(arrays)
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in prepared.items()},
        "sha256": _digest(prepared),
        "meta": _jsonable(dict(meta or {}), "meta"),
    }
    blob = json.dumps(record, allow_nan=False, sort_keys=True).encode("utf-8")
    payload = dict(prepared)
    payload[META_KEY] = np.frombuffer(blob, dtype=np.uint8)

    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless to skip where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint_record(path) -> dict[str, Any]:
    """The stored record (format, version, array table, sha256, meta) without reading arrays."""
    path = Path(path)
    with _open(path) as npz:
        return _record(path, npz)


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable .npz file (truncated or "
                              f"corrupted?): {type(exc).__name__}: {exc}") from exc


def _read(path: Path, npz, name: str) -> np.ndarray:
    try:
        return npz[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise CheckpointError(f"checkpoint {path}: entry {name!r} holds pickled Python "
                                  "objects; refused (checkpoints never load pickles)") from exc
        raise CheckpointError(f"checkpoint {path}: entry {name!r} is unreadable: {exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: entry {name!r} is corrupted "
                              f"({type(exc).__name__}: {exc})") from exc


def _record(path: Path, npz) -> dict[str, Any]:
    if META_KEY not in npz.files:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY} entry: a plain .npz, "
                              f"not a {FORMAT_NAME} file")
    raw = _read(path, npz, META_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"checkpoint {path}: {META_KEY} has dtype {raw.dtype}, "
                              f"shape {raw.shape}; expected 1-d uint8 JSON bytes")
    try:
        record = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {META_KEY} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise CheckpointError(f"checkpoint {path}: format is "
                              f"{record.get('format') if isinstance(record, dict) else None!r}, "
                              f"expected {FORMAT_NAME!r}")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r}, this code reads "
                              f"version {FORMAT_VERSION}")
    for key in ("arrays", "sha256", "meta"):
        if key not in record:
            raise CheckpointError(f"checkpoint {path}: record lacks {key!r}")
    return record


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` from ``save_checkpoint``: flat names, numpy arrays, the meta dict.

    Raises ``CheckpointError`` (naming the file and the fault) unless the file is a
    complete checkpoint of this format whose array contents match the stored sha256.
    Use ``unflatten(arrays)`` for nested dicts.
    """
    path = Path(path)
    with _open(path) as npz:
        record = _record(path, npz)
        expected = record["arrays"]
        names = [n for n in npz.files if n != META_KEY]
        missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
        if missing or extra:
            raise CheckpointError(f"checkpoint {path}: array entries do not match its record "
                                  f"(missing {missing}, unexpected {extra})")
        arrays = {name: _read(path, npz, name) for name in expected}
    for name, a in arrays.items():
        info = expected[name]
        if a.dtype.str != info["dtype"] or list(a.shape) != info["shape"]:
            raise CheckpointError(f"checkpoint {path}: array {name!r} is {a.dtype.str}{list(a.shape)}, "
                                  f"its record says {info['dtype']}{info['shape']}")
    if _digest(arrays) != record["sha256"]:
        raise CheckpointError(f"checkpoint {path}: sha256 of the array contents does not match "
                              "the stored checksum (corrupted or edited)")
    return arrays, record["meta"]


# -- a directory of step checkpoints --------------------------------------------------------
def step_checkpoint_path(directory, step: int) -> Path:
    """``directory/ckpt-000001234.npz``: names sort by step."""
    return Path(directory) / f"ckpt-{int(step):09d}.npz"


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of ``ckpt-*.npz`` files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _first_valid(paths) -> Path | None:
    """The first of ``paths`` that loads and passes every check (a damaged file is skipped)."""
    for path in paths:
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def latest_checkpoint(directory, verify: bool = False) -> Path | None:
    """The newest step checkpoint (by step number), or None.

    With ``verify=True`` each candidate is loaded, newest first, and the first one that
    passes all checks is returned (a resume skips a damaged last file).
    """
    paths = [path for _, path in reversed(list_checkpoints(directory))]
    if not verify:
        return paths[0] if paths else None
    return _first_valid(paths)


def newest_checkpoint(directory, also: tuple[str, ...] = ("final.npz",)) -> Path | None:
    """The valid checkpoint of the latest step among the step checkpoints and the files
    named in ``also`` (their step read from the stored ``meta["step"]``), or None.

    A run's ``final.npz`` is newer than its last periodic checkpoint (up to one checkpoint
    interval of steps), while a resumed run that stopped early leaves step checkpoints
    newer than the old ``final.npz``: resuming must pick whichever is later. Candidates
    are verified newest first; a damaged one is skipped.
    """
    directory = Path(directory)
    candidates = list_checkpoints(directory)
    for name in also:
        path = directory / name
        if path.is_file():
            try:
                candidates.append((int(read_checkpoint_record(path)["meta"].get("step", -1)), path))
            except (CheckpointError, TypeError, ValueError):
                continue
    return _first_valid(path for _, path in sorted(candidates, key=lambda c: c[0], reverse=True))


def prune_checkpoints(directory, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints; return what was deleted."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = list_checkpoints(directory)[:-keep]
    for _, path in old:
        path.unlink(missing_ok=True)
    return [p for _, p in old]


def save_step_checkpoint(directory, step: int, arrays: Mapping[str, Any],
                         meta: Mapping[str, Any] | None = None, keep: int | None = 3) -> Path:
    """``save_checkpoint`` to ``step_checkpoint_path(directory, step)`` (``meta["step"]`` set),
    then keep only the newest ``keep`` (None: keep all)."""
    meta = dict(meta or {})
    meta.setdefault("step", int(step))
    path = save_checkpoint(step_checkpoint_path(directory, step), arrays, meta)
    if keep is not None:
        prune_checkpoints(directory, keep)
    return path


__all__ = ["CheckpointError", "FORMAT_VERSION", "NonFiniteError", "flatten", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "prune_checkpoints", "read_checkpoint_record",
           "save_checkpoint", "save_step_checkpoint", "split_arrays", "step_checkpoint_path",
           "unflatten"]
