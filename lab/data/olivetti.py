"""The Olivetti / AT&T faces: 400 grey 64x64 images of 40 subjects.

The project's stand-in for the thesis's Toronto Face Database experiments (the TFD
is restricted). Credit: "Olivetti Research Laboratory".

Verification. A local ``olivetti/olivetti_faces.npz`` is accepted when its file
sha256 equals the reference copy's (``NPZ_SHA256``, from the data README), or, for an
npz this module wrote itself (zip bytes vary with the numpy version), when the sha256
of its array contents equals ``CONTENT_SHA256``, computed from that reference copy.

Download. The source is scikit-learn's ``olivettifaces.mat`` (Sam Roweis's file,
served at ``MAT_URL``), checked against sklearn's published sha256 ``MAT_SHA256``
before it is converted. The mat holds the raw 0-255 grey levels as a (4096, 400)
column-per-face matrix; sklearn rescales them to float32 in [0, 1] and transposes each
face (``faces.T.reshape(400, 64, 64).transpose(0, 2, 1)``). We apply the same
reshape and transpose but keep the raw uint8 levels, which is what the reference npz
holds (its maximum is 242, so it is not a rescaled copy). To be honest about what is
and is not known: the conversion has not been run against a real download here (no
internet); the converted arrays must still match ``CONTENT_SHA256``, so a conversion
that differed from the reference would fail loudly rather than give other data.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from lab.data._files import (DataError, DataNotFoundError, cache_dir, download, find_file,
                             not_found_message, save_npz_atomic, sha256_file)

NPZ_NAME = "olivetti_faces.npz"
NPZ_SHA256 = "7b070875710e6a7f084b264d308d6b1bcbcfab2ea6881d49caa2eee631691f70"
#: sha256 of ``images.tobytes() + subjects.tobytes()`` of the reference npz.
CONTENT_SHA256 = "87fde6e7e0dff9701f9ace62e19359854009c03e8915fb859365d39e95cbc70a"
MAT_URL = "https://ndownloader.figshare.com/files/5976027"
MAT_SHA256 = "b612fb967f2dc77c9c62d3e1266e0c73d5fca46a4b8906c18e454d41af987794"


def content_sha256(images: np.ndarray, subjects: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(subjects).tobytes())
    return h.hexdigest()


def _check_arrays(where, images, subjects) -> None:
    if images.shape != (400, 64, 64) or images.dtype != np.uint8:
        raise DataError(f"{where}: images are {images.dtype}{images.shape}, "
                        "expected uint8(400, 64, 64)")
    if subjects.shape != (400,) or subjects.dtype != np.uint8:
        raise DataError(f"{where}: subjects are {subjects.dtype}{subjects.shape}, "
                        "expected uint8(400,)")


def read_olivetti_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify an Olivetti npz (see the module docstring); ``DataError`` names the file."""
    path = Path(path)
    file_ok = sha256_file(path) == NPZ_SHA256
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"images", "subjects"} - set(z.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}")
            images, subjects = z["images"], z["subjects"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: truncated or corrupt npz ({type(exc).__name__}: {exc})") from exc
    _check_arrays(path, images, subjects)
    if not file_ok and content_sha256(images, subjects) != CONTENT_SHA256:
        raise DataError(f"{path}: sha256 mismatch (corrupt or tampered copy): neither the file "
                        f"sha256 ({NPZ_SHA256}) nor the array contents match the reference")
    return images, subjects


def convert_mat(mat_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Arrays from sklearn's ``olivettifaces.mat`` after checking its sha256 (needs scipy)."""
    mat_path = Path(mat_path)
    got = sha256_file(mat_path)
    if got != MAT_SHA256:
        raise DataError(f"{mat_path}: sha256 mismatch for olivettifaces.mat: got {got}, "
                        f"expected {MAT_SHA256}")
    try:
        from scipy.io import loadmat  # noqa: PLC0415  (optional: only for the download)
    except ImportError as exc:
        raise DataError("converting the downloaded Olivetti faces (.mat) needs scipy: "
                        "pip install scipy, or point LAB_DATA_DIR at a copy of "
                        f"olivetti/{NPZ_NAME}") from exc
    faces = np.asarray(loadmat(str(mat_path))["faces"])
    if faces.shape != (4096, 400):
        raise DataError(f"{mat_path}: 'faces' has shape {faces.shape}, expected (4096, 400)")
    if faces.min() < 0 or faces.max() > 255 or not np.array_equal(faces, np.round(faces)):
        raise DataError(f"{mat_path}: 'faces' is not 0-255 grey levels")
    images = np.ascontiguousarray(faces.T.reshape(400, 64, 64).transpose(0, 2, 1)).astype(np.uint8)
    subjects = (np.arange(400) // 10).astype(np.uint8)  # 10 consecutive images per subject
    if content_sha256(images, subjects) != CONTENT_SHA256:
        raise DataError(f"{mat_path}: converted faces differ from the reference copy "
                        f"(content sha256 {content_sha256(images, subjects)}); please report this")
    return images, subjects


def olivetti_file(path=None, *, download_missing: bool = True, opener=None,
                  progress: bool = True) -> tuple[str, Path, tuple[np.ndarray, np.ndarray]]:
    """``(origin, file, (images, subjects))``: found and verified, or downloaded and converted."""
    found = find_file("olivetti", (NPZ_NAME,), path)
    if found is not None:
        return found[0], found[1], read_olivetti_npz(found[1])
    if not download_missing:
        raise DataNotFoundError(not_found_message("Olivetti faces", "olivetti", path))
    dest = cache_dir() / "olivetti" / NPZ_NAME
    mat = dest.with_name("olivettifaces.mat")
    converted = {}
    try:
        download([MAT_URL], mat, lambda p: converted.update(arrays=convert_mat(p)),
                 opener=opener, desc="Olivetti faces", progress=progress)
    except DataNotFoundError as exc:
        raise DataNotFoundError(not_found_message("Olivetti faces", "olivetti", path,
                                                  f"\nDownload failed: {exc}")) from exc
    try:
        images, subjects = converted["arrays"]
        save_npz_atomic(dest, images=images, subjects=subjects)
    finally:
        mat.unlink(missing_ok=True)  # the npz is what we keep
    return "download", dest, (images, subjects)


def load_olivetti(path=None, *, download: bool = True, opener=None,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Olivetti faces ``(images uint8 (400, 64, 64), subjects uint8 (400,))``.

    The stand-in for the thesis's TFD experiment (section 2.7); search order and verification
    as in ``lab.data._files`` and this module's docstring.
    """
    return olivetti_file(path, download_missing=download, opener=opener, progress=progress)[2]
