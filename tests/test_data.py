"""Tests for lab.data: verified loaders, binarisation, 5x5 patches, outlines (thesis 3.3).

Tests that need MNIST / Olivetti use ``$LAB_DATA_DIR`` or the user cache and skip
(with a reason) when neither has the data; ``lab data fetch`` downloads it.
"""
import gzip
import hashlib
import importlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import lab.data.patches as P
from lab.backend import RandomStream
from lab.data import (DataError, DataNotFoundError, binarize, codes_to_patches, load_mnist,
                      load_olivetti, mnist_patch_codes, mnist_patch_sources, mnist_patches,
                      mnist_splits, outline_batches, outlines, outlines_splits, patch_entropy,
                      patch_histogram, patches_to_codes)
from lab.data import mnist as M
from lab.data import olivetti as O
from lab.data._files import download

SKIP_MNIST = "MNIST not found in $LAB_DATA_DIR or the user cache (run `lab data fetch mnist`)"
SKIP_FACES = ("Olivetti faces not found in $LAB_DATA_DIR or the user cache "
              "(run `lab data fetch olivetti`)")


@pytest.fixture(scope="module")
def mnist_src():
    """name -> verified source file of each MNIST idx file, or skip."""
    try:
        return {name: M.mnist_file(name, download_missing=False)[1] for name in M.FILES}
    except DataNotFoundError:
        pytest.skip(SKIP_MNIST)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No LAB_DATA_DIR, an empty cache under tmp_path: returns the cache directory."""
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))
    return cache


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def no_network(url):
    raise AssertionError(f"unexpected download of {url}")


def raw_idx(src: Path) -> bytes:
    data = src.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# --- MNIST: the standard split -------------------------------------------------------

def test_standard_mnist(mnist_src):
    x, y = load_mnist("train", download=False)
    xt, yt = load_mnist("test", download=False)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.uint8
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(x.sum(dtype=np.int64)) == 1_567_298_545
    assert int(xt.sum(dtype=np.int64)) == 264_923_200
    x[0, 0, 0] = 77  # callers get their own copy
    assert load_mnist("train", download=False)[0][0, 0, 0] == 0


def test_thesis_split(mnist_src):
    s = mnist_splits(download=False)
    x, y = load_mnist("train", download=False)
    assert {k: len(v[0]) for k, v in s.items()} == {"train": 50000, "valid": 10000, "test": 10000}
    assert np.array_equal(s["valid"][0], x[50000:]) and np.array_equal(s["train"][1], y[:50000])
    assert s["test"][1][:3].tolist() == [7, 2, 1]
    with pytest.raises(ValueError, match="unknown MNIST split"):
        load_mnist("valid")


# --- search order and verification ------------------------------------------------------

def test_search_order(mnist_src, tmp_path, isolated, monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    (isolated / "mnist").mkdir(parents=True)
    shutil.copy(mnist_src[name], isolated / "mnist" / (name + ".gz"))
    assert M.mnist_file(name, explicit, download_missing=False)[0] == "cache"
    (env / "mnist").mkdir(parents=True)
    (env / "mnist" / name).write_bytes(raw_idx(mnist_src[name]))  # uncompressed is fine too
    monkeypatch.setenv("LAB_DATA_DIR", str(env))
    assert M.mnist_file(name, explicit, download_missing=False)[0] == "LAB_DATA_DIR"
    explicit.mkdir()
    shutil.copy(mnist_src[name], explicit / (name + ".gz"))
    origin, f, labels = M.mnist_file(name, explicit, download_missing=False)
    assert (origin, f.parent) == ("path", explicit) and labels[:3].tolist() == [7, 2, 1]
    # A corrupt copy earlier in the order is an error, never skipped for a later one.
    (explicit / (name + ".gz")).write_bytes(gz(b"\0" * 100))
    with pytest.raises(DataError, match=str(explicit)):
        M.mnist_file(name, explicit, download_missing=False)


def test_missing_names_every_place(isolated, tmp_path):
    with pytest.raises(DataNotFoundError) as exc:
        load_mnist("test", tmp_path / "nowhere", download=False)
    msg = str(exc.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "nowhere") in msg
    assert str(isolated / "mnist") in msg


def corrupt_variants(raw: bytes):
    """(label, file bytes, expected message) for the ways a copy can be broken."""
    good = gz(raw)
    flipped = bytearray(raw)
    flipped[5000] ^= 0x01
    magic = bytearray(raw)
    magic[3] = 2
    dims = bytearray(raw)
    dims[4:8] = (9999).to_bytes(4, "big")
    return [("truncated gz", good[: len(good) // 2], "truncated or corrupt gzip"),
            ("flipped byte", gz(bytes(flipped)), "sha256 mismatch"),
            ("wrong magic", gz(bytes(magic)), "magic number"),
            ("wrong dims", gz(bytes(dims)), "expected \\(10000, 28, 28\\)"),
            ("truncated raw", raw[:-28], "truncated: .* expected 7840016"),
            ("too long", raw + b"\0", "too long"),
            ("empty", b"", "shorter than the idx header")]


def test_corrupt_copies_rejected(mnist_src, tmp_path, isolated):
    name = "t10k-images-idx3-ubyte"
    raw = raw_idx(mnist_src[name])
    for label, data, message in corrupt_variants(raw):
        d = tmp_path / label.replace(" ", "_")
        d.mkdir()
        f = d / (name + ".gz")
        f.write_bytes(data)
        with pytest.raises(DataError, match=message) as exc:
            load_mnist("test", d, download=False)
        assert str(f) in str(exc.value), label
        assert isinstance(exc.value, ValueError)


# --- downloads: atomic, verified, never partial -----------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def test_download_from_file_url(mnist_src, tmp_path, isolated):
    name = "t10k-labels-idx1-ubyte"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(mnist_src[name], mirror / (name + ".gz"))
    dest = isolated / "mnist" / (name + ".gz")
    urls = [(tmp_path / "missing.gz").as_uri(), (mirror / (name + ".gz")).as_uri()]
    assert download(urls, dest, lambda p: M.read_idx(p, name), progress=False) == dest
    assert sorted(os.listdir(dest.parent)) == [name + ".gz"]  # no temporary left behind
    assert M.mnist_file(name, download_missing=False)[0] == "cache"


def test_download_with_fake_opener(mnist_src, isolated, monkeypatch, capsys):
    monkeypatch.setattr(M, "MIRRORS", ("https://a.invalid/", "https://b.invalid/"))
    raw = {n: raw_idx(mnist_src[n]) for n in M.SPLITS["test"]}
    seen = []

    def opener(url):
        seen.append(url)
        if url.startswith("https://a."):
            raise OSError("mirror down")
        return FakeResponse(gz(raw[url.rsplit("/", 1)[1][:-3]]))

    x, y = load_mnist("test", opener=opener)
    assert y[:3].tolist() == [7, 2, 1] and len(seen) == 4
    assert "MNIST t10k-images-idx3-ubyte [" in capsys.readouterr().err  # the progress bar
    assert sorted(os.listdir(isolated / "mnist")) == sorted(n + ".gz" for n in raw)
    load_mnist("test", opener=no_network)  # now served from the cache


@pytest.mark.parametrize("failure", ["checksum", "short", "interrupted"])
def test_failed_download_leaves_nothing(mnist_src, isolated, monkeypatch, failure):
    name = "t10k-labels-idx1-ubyte"
    raw = bytearray(raw_idx(mnist_src[name]))
    raw[-1] ^= 0xFF

    class Broken(FakeResponse):
        def read(self, n=-1):
            raise ConnectionResetError("connection reset")

    def opener(url):
        data = gz(bytes(raw))
        if failure == "short":
            return FakeResponse(data[:100], length=len(data))
        return Broken(data) if failure == "interrupted" else FakeResponse(data)

    with pytest.raises(DataNotFoundError) as exc:
        M.mnist_file(name, opener=opener, progress=False)
    assert {"checksum": "sha256 mismatch", "short": "server announced",
            "interrupted": "connection reset"}[failure] in str(exc.value)
    assert not (isolated / "mnist").exists() or os.listdir(isolated / "mnist") == []


# --- Olivetti ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces_src():
    try:
        return O.olivetti_file(download_missing=False)[1]
    except DataNotFoundError:
        pytest.skip(SKIP_FACES)


def test_olivetti(faces_src):
    images, subjects = load_olivetti(download=False)
    assert images.shape == (400, 64, 64) and images.dtype == np.uint8
    assert subjects.dtype == np.uint8 and subjects.tolist() == [i // 10 for i in range(400)]


def test_olivetti_rejects_tampering(faces_src, tmp_path, isolated):
    images, subjects = O.read_olivetti_npz(faces_src)
    resaved = tmp_path / "resaved"
    resaved.mkdir()
    np.savez_compressed(resaved / O.NPZ_NAME, images=images, subjects=subjects)
    load_olivetti(resaved, download=False)  # other zip bytes, same arrays: accepted
    bad = images.copy()
    bad[7, 30, 30] ^= 1
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    np.savez(tampered / O.NPZ_NAME, images=bad, subjects=subjects)
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_olivetti(tampered, download=False)
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    data = bytearray(faces_src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / O.NPZ_NAME).write_bytes(bytes(data))
    with pytest.raises(DataError, match=str(flipped)):
        load_olivetti(flipped, download=False)
    (flipped / O.NPZ_NAME).write_bytes(faces_src.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated or corrupt npz"):
        load_olivetti(flipped, download=False)


def test_olivetti_download_converts_mat(faces_src, tmp_path, isolated, monkeypatch):
    """The .mat pipeline on a mat rebuilt from the reference (the real one needs internet)."""
    savemat = pytest.importorskip("scipy.io").savemat
    images, subjects = O.read_olivetti_npz(faces_src)
    mat = tmp_path / "olivettifaces.mat"
    savemat(mat, {"faces": images.transpose(0, 2, 1).reshape(400, 4096).T.copy()})
    with pytest.raises(DataNotFoundError, match="sha256 mismatch for olivettifaces.mat"):
        load_olivetti(opener=lambda url: FakeResponse(mat.read_bytes()), progress=False)
    assert not (isolated / "olivetti").exists() or os.listdir(isolated / "olivetti") == []
    monkeypatch.setattr(O, "MAT_SHA256", hashlib.sha256(mat.read_bytes()).hexdigest())
    got = load_olivetti(opener=lambda url: FakeResponse(mat.read_bytes()), progress=False)
    assert np.array_equal(got[0], images) and np.array_equal(got[1], subjects)
    assert os.listdir(isolated / "olivetti") == [O.NPZ_NAME]
    origin, _, again = O.olivetti_file(opener=no_network)
    assert origin == "cache" and np.array_equal(again[0], images)


# --- stochastic binarisation (3.3.2) ----------------------------------------------------

def test_binarize_statistics():
    levels = np.array([0, 1, 64, 128, 200, 255], dtype=np.uint8)
    images = np.tile(levels, (4000, 1))
    s = binarize(images, RandomStream(0))
    assert s.dtype == np.float32 and s.shape == images.shape
    assert set(np.unique(s).tolist()) <= {0.0, 1.0}
    mean = s.mean(0)
    assert mean[0] == 0.0 and mean[-1] == 1.0
    assert np.allclose(mean, levels / 255.0, atol=4 * math.sqrt(0.25 / 4000))


def test_binarize_fresh_and_seeded():
    x = np.full((50, 28, 28), 128, dtype=np.uint8)
    a = RandomStream(7)
    first, second = binarize(x, a), binarize(x, a)
    assert not np.array_equal(first, second)  # a fresh sample each call
    assert np.array_equal(first, binarize(x, RandomStream(7)))
    assert np.array_equal(binarize(x, RandomStream(3)), binarize(x / 255.0, RandomStream(3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(np.array([0.5, 1.5]), RandomStream(0))
    with pytest.raises(TypeError):
        binarize(np.array([1, 2], dtype=np.int64), RandomStream(0))


@pytest.mark.gpu
def test_binarize_on_gpu():
    from lab.backend import get_backend
    s = binarize(np.full((100, 10), 64, np.uint8), RandomStream(0, get_backend("gpu")))
    assert type(s).__module__.startswith("cupy") and s.dtype == np.float32


# --- 5x5 patches (3.3.4) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def patch_env(mnist_src, tmp_path_factory):
    """Build the patch cache once, in a temporary cache, from the verified MNIST."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_DATA_DIR", str(mnist_src["t10k-images-idx3-ubyte"].parent.parent))
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("patchcache")))
        P._memo.clear()
        yield
        P._memo.clear()


def test_patch_counts(patch_env):
    sizes = {s: len(mnist_patch_codes(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 24_192_000, "valid": 8_064_000, "test": 8_064_000}
    assert sum(sizes.values()) == 70_000 * 24 ** 2 == P.TOTAL
    assert mnist_patch_codes("test").dtype == np.uint32
    assert int(mnist_patch_codes("train").max()) < 1 << 25
    assert P.cache_file().is_file()
    P._memo.clear()  # the second time it comes from the cache file
    assert np.array_equal(mnist_patch_codes("valid")[:1000], mnist_patch_codes("valid")[:1000])


def test_patches_match_thresholded_crops(patch_env):
    images = np.concatenate([load_mnist("train", download=False)[0],
                             load_mnist("test", download=False)[0]])
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        codes = mnist_patch_codes(split)
        ks = rng.integers(0, len(codes), 300)
        image, row, col = mnist_patch_sources(split, ks)
        for k, image, row, col in zip(ks, image, row, col):
            crop = images[image, row:row + 5, col:col + 5] > 127.5
            unpacked = codes_to_patches(codes[k:k + 1])[0]
            assert np.array_equal(unpacked, crop.ravel().astype(np.uint8))
            assert patches_to_codes(crop) == codes[k]
    p = mnist_patches("valid", slice(0, 1000))
    assert p.shape == (1000, 25) and p.dtype == np.uint8
    assert np.array_equal(patches_to_codes(p.reshape(-1, 5, 5)), mnist_patch_codes("valid")[:1000])


def test_patch_split_is_a_partition():
    assert math.gcd(P._WEYL, P.TOTAL) == 1  # i -> A i mod N is a bijection
    assert P._WEYL * P._WEYL_INV % P.TOTAL == 1
    image, row, col = mnist_patch_sources("all", np.arange(0, P.TOTAL, 101))
    flat = (image * 24 + row) * 24 + col
    assert len(np.unique(flat)) == len(flat) and flat.min() >= 0 and flat.max() < P.TOTAL
    assert row.max() == col.max() == 23 and image.max() == 69_999
    # Every image gives about 60% of its patches to training.
    train_images = mnist_patch_sources("train", np.arange(0, 24_192_000, 7))[0]
    per_image = np.bincount(train_images, minlength=70_000) * 7
    assert abs(per_image.mean() - 0.6 * 576) < 1 and per_image.min() > 0.4 * 576


def test_patch_histogram_and_entropy(patch_env):
    codes, counts = patch_histogram("test")
    assert np.all(np.diff(codes.astype(np.int64)) > 0) and counts.sum() == 8_064_000
    h_test = patch_entropy("test")
    assert 4.6 < h_test < 4.9
    assert abs(patch_entropy("train") - 4.78) < 0.01  # the thesis's footnote 7


# --- outlines (3.3.5) -------------------------------------------------------------------

def test_outlines_deterministic_and_binary():
    a = outlines(50, seed=3)
    assert a.shape == (50, 16, 16) and a.dtype == np.uint8
    assert set(np.unique(a).tolist()) == {0, 1}
    assert np.array_equal(a, outlines(50, seed=3))
    assert not np.array_equal(a, outlines(50, seed=4))
    assert a.reshape(50, -1).sum(1).min() >= 20  # a rectangle and a triangle in each
    long = outlines(2100, seed=3)
    assert np.array_equal(long[:50], a)
    assert np.array_equal(outlines(30, seed=3, start=1010), long[1010:1040])  # across chunks
    f = outlines(5, size=24, seed=1, dtype=np.float32)
    assert f.shape == (5, 24, 24) and f.dtype == np.float32
    it = outline_batches(100, seed=3, start=1000)
    assert np.array_equal(next(it), long[1000:1100]) and np.array_equal(next(it), long[1100:1200])
    assert outlines(0).shape == (0, 16, 16)


def test_outlines_splits(monkeypatch):
    OL = importlib.import_module("lab.data.outlines")  # the package attribute is the function
    monkeypatch.setattr(OL, "N_TRAIN", 300)
    monkeypatch.setattr(OL, "N_VALID", 100)
    monkeypatch.setattr(OL, "N_TEST", 100)
    monkeypatch.setattr(OL, "TRAIN_START", 200)
    s = outlines_splits(seed=5)  # reads the module's sizes at call time
    assert {k: v.shape for k, v in s.items()} == {"train": (300, 16, 16), "valid": (100, 16, 16),
                                                  "test": (100, 16, 16)}
    assert np.array_equal(s["test"], outlines(100, seed=5, start=100))
    assert np.array_equal(s["train"][:10], outlines(10, seed=5, start=200))
    assert (OL.N_VALID, OL.N_TEST, OL.N_TRAIN) == (100, 100, 300)
    monkeypatch.undo()
    assert (OL.N_VALID, OL.N_TEST, OL.N_TRAIN) == (10000, 10000, 50000)


# --- the CLI ----------------------------------------------------------------------------

def test_cli_check(mnist_src, capsys):
    from lab.cli import main
    rc = main(["data", "check"])
    report = json.loads(capsys.readouterr().out)
    assert report["mnist"]["verified"] is True and rc == 0
    assert set(report) == {"mnist", "olivetti"}


def test_cli_check_reports_corruption(isolated, capsys):
    from lab.cli import main
    (isolated / "olivetti").mkdir(parents=True)
    (isolated / "olivetti" / O.NPZ_NAME).write_bytes(b"not a zip")
    assert main(["data", "check"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["olivetti"] == {"found": True, "verified": False,
                                  "error": report["olivetti"]["error"]}
    assert O.NPZ_NAME in report["olivetti"]["error"] and report["mnist"]["found"] is False
