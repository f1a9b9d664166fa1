"""The GPU path's array code, run on the CPU.

Two tricks make most of it checkable here without CuPy: the ops' ``forward_gpu`` /
``backward_gpu`` are plain array code, so they run with ``xp = numpy`` against the CPU
methods; and a ``Backend("gpu", numpy)`` sends the trainer and the random stream down
their GPU branches (device upload, on-device minibatch gather, deferred host reads,
device-side good state) while the arrays stay numpy. What this cannot check (CuPy's
own behaviour, kernels) is left to tests/test_gpu.py and benchmarks/gpu_check.py.
"""
import numpy as np
import pytest

import lab.autodiff as ad
from lab.autodiff.ops.shapes import GetItem
from lab.backend import Backend, RandomStream
from lab.graphics.om import MaxSemiSoft

FAKE_GPU = Backend("gpu", np)


def test_max_semi_soft_gpu_methods_match_cpu(rng):
    for shape, axis in (((3, 4, 5, 6), 1), ((7, 5), -1), ((2, 3, 4), 0)):
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        gy = rng.standard_normal(np.delete(shape, axis % len(shape))).astype(np.float32)
        cpu, gpu = MaxSemiSoft(axis, 100.0), MaxSemiSoft(axis, 100.0)
        cpu.inputs = gpu.inputs = (ad.Tensor(a),)
        y_cpu, y_gpu = cpu.forward(np, a), gpu.forward_gpu(np, a)
        np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(gpu.backward_gpu(np, gy)[0], cpu.backward(np, gy)[0],
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", [(slice(1, 3), slice(None, None, 2)), (Ellipsis, 1),
                                 (slice(None), None, 0), np.array([0, 2, 0]),
                                 (np.array([0, 1]), np.array([2, 2]))])
def test_getitem_gpu_methods_match_cpu(rng, key):
    x = rng.standard_normal((3, 4, 5))
    cpu, gpu = GetItem(key), GetItem(key)
    y = cpu.forward(np, x)
    np.testing.assert_array_equal(gpu.forward_gpu(np, x), y)
    gy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(gpu.backward_gpu(np, gy)[0], cpu.backward(np, gy)[0])


def test_scalar_constants_stay_arrays_on_the_cpu():
    x = ad.Tensor(np.ones(3, np.float32), requires_grad=True)
    c = ad.as_tensor(2.5, like=x)
    assert isinstance(c.data, np.ndarray) and c.data.dtype == np.float32


def test_gpu_stream_branches_draw_on_the_host_and_restore_deterministically():
    s = RandomStream(5, FAKE_GPU)
    order = s.permutation(10)
    assert isinstance(order, np.ndarray) and sorted(order) == list(range(10))
    assert isinstance(int(s.integers(0, 2**63 - 1)), int)
    s.uniform((3,))
    state = s.get_state()
    assert state["kind"] == "gpu"
    a, b = RandomStream(0, FAKE_GPU), RandomStream(1, FAKE_GPU)
    a.set_state(state)
    b.set_state(state)
    np.testing.assert_array_equal(a.uniform((6,)), b.uniform((6,)))
    np.testing.assert_array_equal(a.permutation(8), b.permutation(8))


# -- the trainer's GPU branches ---------------------------------------------------------------
def _tiny():
    from lab.capsules import CapsuleConfig
    return CapsuleConfig(name="tiny", model="mixture", image_size=8, n_components=3, n_acs=2,
                         template_size=3, n_distortions=2, encoder_hidden=12, decoder_hidden=8,
                         batch_size=16, n_valid=16, eval_every=6, optimizer="conservative")


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    r = np.arange(8)
    out = np.zeros((n, 8, 8), np.float32)
    for i in range(n):
        c = rng.uniform(2, 5, 2)
        out[i] = np.exp(-((r[:, None] - c[0]) ** 2 + (r[None, :] - c[1]) ** 2) / 3.0)
    return out


def test_deferred_steps_report_at_checks_and_learn():
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    tr = CapsuleTrainer(_tiny(), x[:48], x[48:], seed=0, device=FAKE_GPU)
    assert tr.sync_every == 10 and tr._train_dev is not None
    assert tr.optimizer.record_every == 100              # rule counts: every 10th check
    ms = [tr.step() for _ in range(100)]
    checks = [m for m in ms if "loss" in m]
    assert [m["step"] for m in checks] == list(range(10, 101, 10))
    for m in checks:
        for key in ("recon", "recon_per_pixel", "weight_decay", "mixture_max_y"):
            assert key in m, key
        assert np.isfinite(m["loss"])
        assert ("rule_rule3" in m) == (m["step"] == 100), m["step"]   # only freshly counted
    assert "loss" not in ms[0] and ms[0]["images"] == 16
    assert all("loss" in m or "valid_recon_nodropout" in m for m in tr.history)
    assert checks[-1]["recon"] < checks[0]["recon"]


def test_deferred_step_loss_equals_the_cpu_step():
    """Same seed, same batches: the deferred step computes the same update as the CPU one."""
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    cfg = _tiny()
    a = CapsuleTrainer(cfg, x[:48], None, seed=4)
    b = CapsuleTrainer(cfg, x[:48], None, seed=4, sync_every=3)
    la = [a.step()["loss"] for _ in range(6)]
    lb = [m["loss"] for m in (b.step() for _ in range(6)) if "loss" in m]
    assert lb == pytest.approx([la[2], la[5]], rel=1e-6)


def test_deferred_rollback_restores_the_last_checked_state():
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    tr = CapsuleTrainer(_tiny(), x[:48], None, seed=2, device=FAKE_GPU, sync_every=2, good_every=2)
    for _ in range(4):
        tr.step()
    good = {k: p.data.copy() for k, p in tr.model.params.items()}
    scale = tr.optimizer.step_scale
    tr.model.params["encoder.W1"].data[0, 0] = np.nan
    assert "loss" not in tr.step()
    m = tr.step()
    assert m["rollback"] == 1 and "non-finite" in m["rollback_reason"]
    assert tr.optimizer.step_scale == pytest.approx(scale * tr.config.nan_step_cut)
    for k, v in good.items():
        np.testing.assert_array_equal(tr.model.params[k].data, v)
    m = [tr.step() for _ in range(2)][-1]
    assert "rollback" not in m and np.isfinite(m["loss"])


def test_trainer_state_from_the_gpu_branch_resumes(tmp_path):
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    tr = CapsuleTrainer(_tiny(), x[:48], None, seed=1, device=FAKE_GPU)
    for _ in range(5):
        tr.step()
    path = tr.save(tmp_path / "g.npz")
    for device in (FAKE_GPU, "cpu"):            # a GPU checkpoint resumes on either
        back = CapsuleTrainer.load(path, x[:48], device=device)
        assert back.step_count == 5
        for k, p in tr.model.params.items():
            np.testing.assert_array_equal(back.model.params[k].data, p.data)
        back.step()


def _host_stream_trainers(cfg, x, seed, device, sync_every):
    """A CPU trainer and a ``device`` trainer that draw the same random numbers."""
    from lab.capsules.trainer import CapsuleTrainer
    cpu = CapsuleTrainer(cfg, x, None, seed=seed)
    dev = CapsuleTrainer(cfg, x, None, seed=seed, device=device, sync_every=sync_every)
    dev.use_host_random()
    return cpu, dev


def test_host_random_stream_makes_the_gpu_branch_follow_the_cpu_run():
    """With the CPU's draws, the trainer's GPU branch (deferred checks, device gather,
    optimizer counting every sync_every steps) takes exactly the CPU run's steps."""
    from lab.backend import HostRandomStream, to_numpy
    a, b = HostRandomStream(5, FAKE_GPU), RandomStream(5)
    np.testing.assert_array_equal(a.uniform((3, 4), 0.0, 10.0), b.uniform((3, 4), 0.0, 10.0))
    np.testing.assert_array_equal(a.permutation(9), b.permutation(9))
    state, again = a.get_state(), HostRandomStream(0, FAKE_GPU)
    again.set_state(state)
    np.testing.assert_array_equal(again.normal((5,)), a.normal((5,)))
    cpu, dev = _host_stream_trainers(_tiny(), _images()[:48], 3, FAKE_GPU, 4)
    for _ in range(12):
        cpu.step()
        dev.step()
    for k, p in cpu.model.params.items():
        np.testing.assert_array_equal(to_numpy(dev.model.params[k].data), p.data, err_msg=k)
    with pytest.raises(RuntimeError, match="before the first step"):
        dev.use_host_random()
    # its checkpoint holds the CPU stream's state: a CPU resume continues it exactly
    assert dev.stream.get_state()["pcg64"] == cpu.stream.get_state()["pcg64"]


def test_trainers_restored_from_one_checkpoint_follow_each_other_with_one_host_seed(tmp_path):
    """``use_host_random(seed)`` after ``load``: the comparison late in a run
    (benchmarks/gpu_learning_gap.late_follow) starts both devices from one state."""
    from lab.backend import to_numpy
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()[:48]
    run = CapsuleTrainer(_tiny(), x, None, seed=2, device=FAKE_GPU, sync_every=3)
    for _ in range(7):
        run.step()
    path = run.save(tmp_path / "late.npz")
    cpu = CapsuleTrainer.load(path, x, device="cpu")
    dev = CapsuleTrainer.load(path, x, device=FAKE_GPU, sync_every=3)
    with pytest.raises(RuntimeError, match="given a seed"):
        dev.use_host_random()
    for tr in (cpu, dev):
        tr.use_host_random(11)
        assert tr.step_count == 7
    for _ in range(9):
        cpu.step()
        dev.step()
    for k, p in cpu.model.params.items():
        np.testing.assert_array_equal(to_numpy(dev.model.params[k].data), p.data, err_msg=k)
    assert any(not np.array_equal(p.data, run.model.params[k].data) for k, p in cpu.model.params.items())


# -- the GPU step as a CUDA graph (lab.capsules.graph_step), with the CPU stand-in -------------
def _graph_pair(seed=6, sync_every=5, **kwargs):
    """The same trainer twice on the fake GPU: eager, and replaying a recorded step
    (``ReplayStandIn``: a replay runs the step function again, counters left alone)."""
    from lab.capsules.graph_step import ReplayStandIn
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    eager = CapsuleTrainer(_tiny(), x[:48], None, seed=seed, device=FAKE_GPU, sync_every=sync_every,
                           graph=False, **kwargs)
    graphed = CapsuleTrainer(_tiny(), x[:48], None, seed=seed, device=FAKE_GPU, sync_every=sync_every,
                             graph=True, **kwargs)
    assert isinstance(graphed._graph.recorder, ReplayStandIn) and eager.graph_info() is None
    return eager, graphed


def _assert_same_run(a, b):
    assert (a.step_count, a.optimizer.step_count, a.stream._draws, a._pos) == \
        (b.step_count, b.optimizer.step_count, b.stream._draws, b._pos)
    for k, p in a.model.params.items():
        np.testing.assert_array_equal(b.model.params[k].data, p.data, err_msg=k)
    for name, slots in a.optimizer.state.items():
        for slot, v in slots.items():
            np.testing.assert_array_equal(b.optimizer.state[name][slot], v, err_msg=f"{name}/{slot}")


def test_replayed_steps_equal_the_eager_run():
    """Record once after an eager step that took the recorded path, replay every step but
    the optimizer's counting ones (checks too: they read the replayed step's outputs),
    keep the step and draw counters: bit for bit the eager run, metrics included."""
    eager, graphed = _graph_pair()
    assert graphed.optimizer.record_every == 50         # every 10th check (sync_every 5)
    checks = []
    for _ in range(55):
        ma, mb = eager.step(), graphed.step()
        assert {k: v for k, v in ma.items() if k != "seconds"} == \
            {k: v for k, v in mb.items() if k != "seconds"}
        if "loss" in mb:
            checks.append((mb["step"], "rule_rule3" in mb))
    assert checks == [(s, s == 50) for s in range(5, 56, 5)]
    _assert_same_run(eager, graphed)
    info = graphed.graph_info()
    # step 1 sets the optimizer's averages, step 2 takes the fused path, step 3 records;
    # step 50 counts the rules eagerly: 55 - 3 - 1 replays
    assert info == {"captures": 1, "replays": 51, "error": None}


def test_a_rollback_drops_the_graph_and_records_again():
    eager, graphed = _graph_pair(seed=2, sync_every=4, good_every=4)
    for tr in (eager, graphed):
        for _ in range(9):
            tr.step()
        tr.model.params["encoder.W1"].data[0, 0] = np.nan
        ms = [tr.step() for _ in range(3)]
        assert ms[-1]["rollback"] == 1
        for _ in range(8):
            tr.step()
    _assert_same_run(eager, graphed)
    assert graphed.graph_info()["captures"] == 2       # the cut step sizes are new constants


def test_new_step_sizes_drop_the_graph_and_record_again():
    """The step sizes are frozen into a recorded graph: changing them (here the alphas,
    as a user could between steps) must lead to a new recording, not a stale replay."""
    eager, graphed = _graph_pair(seed=3)
    for step in range(1, 15):
        if step == 7:
            for tr in (eager, graphed):
                tr.optimizer.alphas = tuple(a * 0.5 for a in tr.optimizer.alphas)
        eager.step()
        graphed.step()
    _assert_same_run(eager, graphed)
    # steps 1-2 eager, 3 records, 4-6 replay; 7 drops the graph and runs eagerly with 8
    # (the averages' state is re-read), 9 records, 10-14 replay
    assert graphed.graph_info() == {"captures": 2, "replays": 8, "error": None}


def test_a_failed_recording_leaves_no_trace_and_the_trainer_steps_eagerly():
    """What a recording cached (device constants are written only when the graph runs)
    is forgotten, the counters are put back, the reason is kept, and the run goes on
    eagerly exactly as the eager trainer's."""
    from lab.autodiff import tensor as tensor_mod

    class Broken:
        executes_while_recording = False

        def record(self, step_fn):
            tensor_mod._DEVICE_CONSTANTS[("poisoned",)] = np.zeros(())
            raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    eager, graphed = _graph_pair()
    graphed._graph.recorder = Broken()
    for _ in range(8):
        eager.step()
        graphed.step()
    _assert_same_run(eager, graphed)
    assert ("poisoned",) not in tensor_mod._DEVICE_CONSTANTS
    assert graphed.graph_info() == {"captures": 0, "replays": 0,
                                    "error": "RuntimeError: cudaErrorStreamCaptureUnsupported"}


def test_no_graph_where_a_step_needs_host_numbers():
    from lab.capsules.graph_step import unsupported
    from lab.capsules.trainer import CapsuleTrainer
    x = _images()
    adam = CapsuleTrainer(_tiny(), x[:48], None, device=FAKE_GPU, optimizer="adam", graph=True)
    assert "only the conservative optimizer" in unsupported(adam)
    assert CapsuleTrainer(_tiny(), x[:48], None, device=FAKE_GPU, optimizer="adam").graph_info() is None
    cpu = CapsuleTrainer(_tiny(), x[:48], None)
    assert cpu.graph_info() is None and "CPU" in unsupported(cpu)
    _, host = _graph_pair()
    host.use_host_random()
    for _ in range(6):
        host.step()
    assert host.graph_info()["replays"] == 0 and "host random" in host.graph_info()["error"]


def test_the_upload_guard_names_host_to_device_copies():
    import types

    from lab.capsules.graph_step import _upload_guard

    class DeviceArray:
        pass

    fake = types.SimpleNamespace(ndarray=DeviceArray, asarray=lambda a, dtype=None: DeviceArray(),
                                 array=lambda a, dtype=None: DeviceArray())
    found = []
    asarray = fake.asarray
    with _upload_guard(fake, found):
        fake.asarray(DeviceArray())                       # already on the device: fine
        fake.asarray([2.0, 3.0])
        fake.array(np.ones(3))
    assert fake.asarray is asarray
    assert found == ["asarray(list) at ?", "array(ndarray) at ?"]      # (not called from lab/)


def test_small_batched_products_and_the_gpu_routes(rng):
    from lab.autodiff.ops.reductions import _gpu_route, small_matmul
    a, b = rng.standard_normal((5, 9, 3, 3)), rng.standard_normal((5, 1, 3, 3))
    np.testing.assert_allclose(small_matmul(np, a, b), a @ b, rtol=1e-12, atol=1e-12)
    f32 = np.float32
    assert _gpu_route(np.ones((4, 3), f32), np.ones((3, 2), f32)) == "gemm"
    assert _gpu_route(a, b) == "small"
    assert _gpu_route(np.ones((2, 4, 8)), np.ones((8, 5))) is None         # inner 8: CuPy's @
    assert _gpu_route(np.ones((4, 3), f32), np.ones((3, 2))) is None         # mixed dtypes
    assert _gpu_route(np.ones(3, f32), np.ones((3, 2), f32)) is None         # a vector
    assert _gpu_route(np.ones((0, 3), f32), np.ones((3, 2), f32)) is None    # empty
    assert _gpu_route(np.ones((4, 3), f32), np.ones((2, 2), f32)) is None    # shapes differ


def test_weight_decay_gpu_forward_matches_cpu(rng):
    from lab.capsules.regularizers import WeightDecay
    thetas = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    cpu, gpu = WeightDecay(0.3, 0.5), WeightDecay(0.3, 0.5)
    y_cpu, y_gpu = cpu.forward(np, *thetas), gpu.forward_gpu(np, *thetas)
    assert y_gpu.dtype == y_cpu.dtype and float(y_gpu) == pytest.approx(float(y_cpu), rel=1e-6)
    gy = np.asarray(1.5, np.float32)
    for g_cpu, g_gpu in zip(cpu.backward(np, gy), gpu.backward(np, gy)):
        np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-6)


def test_train_run_reports_the_graph_and_the_cli_can_turn_it_off(tmp_path):
    from unittest import mock

    from lab.capsules.run import train_run
    from lab.cli import build_parser
    x = _images()
    data = {"train": (x[:48], None), "valid": (x[48:], None)}
    with mock.patch("lab.capsules.run.load_data", return_value=data):
        summary = train_run(_tiny(), tmp_path / "g", steps=12, progress=False, device=FAKE_GPU,
                            graph=True, checkpoint_seconds=1e9)
        eager = train_run(_tiny(), tmp_path / "e", steps=12, progress=False, device=FAKE_GPU,
                          graph=False, checkpoint_seconds=1e9)
    # 12 steps: steps 1-2 eager, 3 records, 4-12 replay (the check at 10 too)
    assert summary["cuda_graph"] == {"captures": 1, "replays": 9, "error": None}
    assert "cuda_graph" not in eager and summary["valid_recon_nodropout"] == eager["valid_recon_nodropout"]
    args = build_parser().parse_args(["train", "capsules", "--device", "gpu", "--no-graph"])
    assert args.graph is False
    assert build_parser().parse_args(["train", "capsules"]).graph is True
