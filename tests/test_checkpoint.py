"""lab.checkpoint: round trips, atomic writes, corruption detection, NaN refusal, retention."""
import os
import zipfile

import numpy as np
import pytest

from lab import checkpoint as ck
from lab.autodiff import Tensor
from lab.backend import RandomStream
from lab.checkpoint import (CheckpointError, NonFiniteError, flatten, latest_checkpoint,
                            load_checkpoint, newest_checkpoint, save_checkpoint,
                            save_step_checkpoint, split_arrays, unflatten)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "encoder": {"h1": {"W": rng.standard_normal((5, 4)).astype(np.float32),
                           "b": np.zeros(4, np.float32)}},
        "templates": rng.random((3, 11, 11)),
        "step_counts": np.array([1, 2, 3], dtype=np.int64),
        "image": (rng.random((4, 4)) * 255).astype(np.uint8),
        "scalar": np.float64(2.5) * np.ones(()),
    }


def test_round_trip_keeps_dtypes_shapes_values_and_meta(tmp_path, arrays):
    rs = RandomStream(7)
    rs.uniform((3,))
    meta = {"config": {"name": "mnist-quick", "sizes": [9, 11]}, "step": 12,
            "rng": rs.get_state(), "optimizer": {"alphas": [0.1, 1.0, 1e-3, 1e-3]},
            "np_scalar": np.float32(0.5), "flag": True, "none": None}
    path = save_checkpoint(tmp_path / "c.npz", arrays, meta)
    loaded, meta2 = load_checkpoint(path)
    flat = flatten(arrays)
    assert set(loaded) == set(flat)
    for name, a in flat.items():
        assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
        np.testing.assert_array_equal(loaded[name], a)
    assert unflatten(loaded)["encoder"]["h1"]["W"].dtype == np.float32
    assert meta2["np_scalar"] == 0.5 and meta2["config"] == meta["config"] and meta2["none"] is None
    rs2 = RandomStream(0)
    rs2.set_state(meta2["rng"])
    np.testing.assert_array_equal(rs2.uniform((5,)), rs.uniform((5,)))
    assert os.listdir(tmp_path) == ["c.npz"]


def test_flatten_unflatten_and_split():
    nested = {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    assert flatten(nested) == {"a/b/c": 1, "a/d": 2, "e": 3}
    assert unflatten(flatten(nested)) == nested
    assert flatten({"p": {"enc/W": 1}}) == {"p/enc/W": 1}
    with pytest.raises(ValueError):
        flatten({"a/": 1})
    with pytest.raises(ValueError):
        unflatten({"a": 1, "a/b": 2})
    arrs, scal = split_arrays({"x": np.ones(2), "n": np.int64(3), "s": "adam"})
    assert list(arrs) == ["x"] and scal == {"n": 3, "s": "adam"} and type(scal["n"]) is int


def test_tensors_are_saved_by_value(tmp_path):
    t = Tensor(np.arange(4.0), requires_grad=True)
    arrays, _ = load_checkpoint(save_checkpoint(tmp_path / "t.npz", {"w": t}, {}))
    np.testing.assert_array_equal(arrays["w"], np.arange(4.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_never_checkpointed(tmp_path, arrays, bad):
    save_checkpoint(tmp_path / "c.npz", arrays, {"step": 1})
    before = (tmp_path / "c.npz").read_bytes()
    arrays["encoder"]["h1"]["W"][2, 1] = bad
    with pytest.raises(NonFiniteError, match="encoder/h1/W"):
        save_checkpoint(tmp_path / "c.npz", arrays, {"step": 2})
    with pytest.raises(NonFiniteError, match="meta.loss"):
        save_checkpoint(tmp_path / "c.npz", {"x": np.ones(2)}, {"loss": float(bad)})
    assert (tmp_path / "c.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_object_arrays_are_refused_on_save(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)}, {})


@pytest.mark.parametrize("where", ["savez", "fsync", "replace"])
def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path, arrays, monkeypatch, where):
    path = tmp_path / "c.npz"
    save_checkpoint(path, arrays, {"step": 1})
    before = path.read_bytes()

    def broken_savez(f, **kw):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full (simulated)")

    def broken(*a, **k):
        raise OSError(f"{where} failed (simulated)")

    if where == "savez":
        monkeypatch.setattr(ck.np, "savez", broken_savez)
    else:
        monkeypatch.setattr(ck.os, where, broken)
    arrays["templates"] += 1
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, arrays, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    assert load_checkpoint(path)[1] == {"step": 1}


def _good(tmp_path, arrays):
    return save_checkpoint(tmp_path / "good.npz", arrays, {"step": 5})


def test_flipped_byte_is_rejected_naming_the_file(tmp_path, arrays):
    path = _good(tmp_path, arrays)
    data = bytearray(path.read_bytes())
    # flip a byte inside the templates array data (found by its .npy member offset)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("templates.npy")
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="good.npz"):
        load_checkpoint(path)


def test_every_single_byte_flip_in_a_small_file_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "s.npz", {"a": np.arange(6.0)}, {"k": 1})
    original = path.read_bytes()
    undetected = []
    for pos in range(0, len(original), 7):
        data = bytearray(original)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            arrays, meta = load_checkpoint(path)
        except CheckpointError:
            continue
        # a flip in zip bookkeeping that does not change the contents is harmless
        if not (np.array_equal(arrays["a"], np.arange(6.0)) and meta == {"k": 1}):
            undetected.append(pos)
    assert undetected == []


def test_truncated_file_is_rejected(tmp_path, arrays):
    path = _good(tmp_path, arrays)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="good.npz"):
            load_checkpoint(path)


def test_plain_npz_and_pickled_objects_and_stale_checksum_are_rejected(tmp_path, arrays):
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(3))
    with pytest.raises(CheckpointError, match=r"plain\.npz.*no __meta__"):
        load_checkpoint(plain)

    # a checkpoint-looking file whose array is a pickled object array
    good = _good(tmp_path, arrays)
    with np.load(good) as z:
        contents = {k: z[k] for k in z.files}
    contents["templates"] = np.array([{"evil": 1}, None], dtype=object)
    objfile = tmp_path / "objects.npz"
    np.savez(objfile, **contents)
    with pytest.raises(CheckpointError, match=r"objects\.npz.*pickle"):
        load_checkpoint(objfile)

    # valid zip, valid record, but an array changed after the checksum was taken
    contents["templates"] = np.zeros((3, 11, 11))
    stale = tmp_path / "stale.npz"
    np.savez(stale, **contents)
    with pytest.raises(CheckpointError, match=r"stale\.npz.*sha256"):
        load_checkpoint(stale)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.npz"):
        load_checkpoint(tmp_path / "text.npz")


def test_wrong_format_version_is_rejected(tmp_path, arrays, monkeypatch):
    monkeypatch.setattr(ck, "FORMAT_VERSION", 99)
    path = _good(tmp_path, arrays)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_step_checkpoints_latest_and_retention(tmp_path):
    for step in (5, 100, 20, 7):
        save_step_checkpoint(tmp_path, step, {"w": np.full(2, float(step))}, {"note": "x"}, keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-000000007.npz", "ckpt-000000020.npz", "ckpt-000000100.npz"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "ckpt-000000100.npz"
    assert load_checkpoint(latest)[1] == {"note": "x", "step": 100}
    latest.write_bytes(latest.read_bytes()[:50])  # a damaged newest file
    assert latest_checkpoint(tmp_path, verify=True).name == "ckpt-000000020.npz"
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_newest_checkpoint_takes_final_npz_when_it_is_later(tmp_path):
    """A run's final state is newer than its last periodic checkpoint; an interrupted
    resume leaves periodic checkpoints newer than the old final state."""
    w = {"w": np.zeros(2)}
    assert newest_checkpoint(tmp_path) is None
    save_step_checkpoint(tmp_path, 1200, w)
    assert newest_checkpoint(tmp_path).name == "ckpt-000001200.npz"
    save_checkpoint(tmp_path / "final.npz", w, {"step": 1430})
    assert newest_checkpoint(tmp_path).name == "final.npz"
    save_step_checkpoint(tmp_path, 2400, w)
    assert newest_checkpoint(tmp_path).name == "ckpt-000002400.npz"
    (tmp_path / "ckpt-000002400.npz").unlink()
    final = tmp_path / "final.npz"
    final.write_bytes(final.read_bytes()[:60])      # damaged: the periodic one it is
    assert newest_checkpoint(tmp_path).name == "ckpt-000001200.npz"


def test_optimizer_state_through_a_checkpoint_resumes_identically(tmp_path):
    from lab.optim import ConservativeOptimizer

    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 5)).astype(np.float32)
    w0 = rng.standard_normal(5).astype(np.float32)

    def run(steps, resume_at):
        w = Tensor(w0.copy(), requires_grad=True)
        opt = ConservativeOptimizer({"enc/w": w}, alphas=(0.1, 1.0, 0.01, 0.05))
        for t in range(steps):
            if t == 11:
                opt.scale_step_sizes(0.5)
            if t == resume_at:
                arrays, scalars = split_arrays(opt.state_dict())
                save_checkpoint(tmp_path / "o.npz", {"params": {"enc/w": w.data}, "opt": arrays},
                                {"opt": scalars})
                loaded, meta = load_checkpoint(tmp_path / "o.npz")
                w = Tensor(loaded["params/enc/w"], requires_grad=True)
                opt = ConservativeOptimizer({"enc/w": w})  # defaults: the state brings alphas
                opt_arrays = {k[len("opt/"):]: v for k, v in loaded.items() if k.startswith("opt/")}
                opt.load_state_dict(meta["opt"] | opt_arrays)
            w.grad = A.T @ (A @ w.data - 1.0)
            opt.step()
        return w.data

    np.testing.assert_array_equal(run(30, resume_at=None), run(30, resume_at=15))


@pytest.mark.gpu
def test_cupy_arrays_are_saved_as_numpy(tmp_path):
    cp = pytest.importorskip("cupy")
    arrays, _ = load_checkpoint(save_checkpoint(tmp_path / "g.npz", {"w": cp.arange(5.0)}, {}))
    assert isinstance(arrays["w"], np.ndarray)
    np.testing.assert_array_equal(arrays["w"], np.arange(5.0))
    with pytest.raises(NonFiniteError, match="'w'"):
        save_checkpoint(tmp_path / "g.npz", {"w": cp.array([1.0, cp.nan])}, {})
