"""The GPU path's CPU-checkable parts: the CUDA sources compile (nvcc, when installed),
Philox matches its published known-answer vectors and, compiled from the same CUDA
text for the host, its numpy reference; the RBM update reference matches BinaryRBM;
launch-shape arithmetic. Nothing here imports CuPy (tests/test_gpu.py runs the kernels
where a device exists)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lab.gpu import KERNEL_DIR, KERNEL_FILES, source
from lab.gpu.philox import philox4x32_10, uniforms

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")


def test_cpu_path_never_imports_cupy():
    code = ("import sys, lab.gpu, lab.gpu.render, lab.gpu.philox, lab.undirected.gpu_update, "
            "lab.graphics.acr; assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sources_inline_their_headers():
    for name in KERNEL_FILES:
        text = source(name)
        assert '#include "' not in text, name
        assert "#include <" not in text, f"{name}: NVRTC has no system headers"
        assert 'extern "C"' in text


@needs_nvcc
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_kernels_compile_with_nvcc(name, tmp_path):
    # the inlined text is what CuPy hands to NVRTC: compile exactly that
    src = tmp_path / name
    src.write_text(source(name))
    res = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-c", "-o", str(tmp_path / "k.o"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr


# Random123's known-answer vectors for Philox4x32-10
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(int(v) for v in philox4x32_10(ctr, key)) == expected


def test_philox_uniforms_shape_and_range():
    u = uniforms(7, 0, 3, (50, 40))
    assert u.shape == (50, 40) and u.dtype == np.float32
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.02
    assert np.array_equal(uniforms(7, 0, 3, 2000).reshape(50, 40), u)
    assert np.array_equal(uniforms(7, 0, 3, 10, start=5), uniforms(7, 0, 3, 15)[5:])
    assert not np.array_equal(uniforms(7, 1, 3, 100), uniforms(7, 0, 3, 100))
    assert not np.array_equal(uniforms(7, 0, 4, 100), uniforms(7, 0, 3, 100))


_HARNESS = r"""
#include <cstdio>
#include "philox.cuh"
int main() {
    const unsigned long long cases[][4] = {
        {0ULL, 0ULL, 3ULL, 5ULL}, {1ULL, 1ULL, 3ULL, 5ULL}, {12345678901ULL, 7ULL, (1ULL << 33) + 5ULL, 0x123456789abcdefULL},
        {999ULL, 65535ULL, 4294967295ULL, 18446744073709551615ULL}};
    for (const auto& c : cases) printf("%.9g\n", philox_uniform(c[0], (unsigned)c[1], c[2], c[3]));
    return 0;
}
"""


@needs_nvcc
def test_cuda_philox_matches_numpy_reference(tmp_path):
    """The CUDA text of philox.cuh, compiled for the host, gives numpy's numbers."""
    (tmp_path / "h.cu").write_text(_HARNESS)
    exe = tmp_path / "h"
    res = subprocess.run([NVCC, "-std=c++17", f"-I{KERNEL_DIR}", "-o", str(exe), str(tmp_path / "h.cu")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    got = np.array([float(x) for x in out], dtype=np.float32)   # %.9g round-trips float32
    cases = [(0, 0, 3, 5), (1, 1, 3, 5), (12345678901, 7, (1 << 33) + 5, 0x123456789ABCDEF),
             (999, 65535, 4294967295, 2**64 - 1)]
    want = np.array([uniforms(seed, stream, step, 1, start=index)[0] for index, stream, step, seed in cases])
    np.testing.assert_array_equal(got, want)


def test_fused_launch_shape():
    from lab.gpu.render import fused_launch_shape
    blocks, threads, shared = fused_launch_shape(500, 9, 11, 11, 28, 28, 4)
    assert blocks == 500 and threads % 32 == 0 and 4 * threads >= 784
    assert shared == (2 * 9 * 121 + 256) * 4
    with pytest.raises(ValueError):
        fused_launch_shape(1, 1, 4, 4, 100, 100, 4)     # more pixels than 4 per thread
    with pytest.raises(ValueError):
        fused_launch_shape(1, 64, 32, 32, 28, 28, 4)    # templates beyond shared memory


def test_split_bits():
    from lab.undirected.gpu_update import split_bits
    assert split_bits(25) == (13, 12) and split_bits(1) == (1, 0) and split_bits(0) == (0, 0)


class _Scripted:
    """A stand-in random stream that hands out prescribed uniforms in order."""

    def __init__(self, arrays):
        self.arrays = list(arrays)

    def uniform(self, shape, low=0.0, high=1.0, dtype=np.float32):
        a = self.arrays.pop(0)
        assert a.shape == tuple(shape), (a.shape, shape)
        return a.astype(dtype)


@pytest.mark.parametrize("algorithm", ["pcd", "fpcd"])
def test_reference_update_matches_binary_rbm(algorithm, rng):
    """reference_update (what the GPU kernels are checked against) is BinaryRBM's update."""
    from lab.undirected import BinaryRBM
    from lab.undirected.gpu_update import reference_update
    nv, nh, n = 12, 7, 6
    X = (rng.random((40, nv)) < 0.4).astype(np.float32)
    rbm = BinaryRBM(n_hidden=nh, algorithm=algorithm, batch_size=n, n_fantasy=5, learning_rate=0.05,
                    fast_learning_rate=0.03, weight_decay=0.001, random_state=0, binarize=False,
                    learning_rate_schedule="constant", n_jobs=1)
    rbm.partial_fit(X[:n])
    rbm.partial_fit(X[n:2 * n])          # particles and overlays are non-trivial now
    before = [np.array(a) for a in (rbm.components_, rbm.intercept_visible_, rbm.intercept_hidden_,
                                    rbm.fantasy_particles_)]
    fast = None
    if algorithm == "fpcd":
        fast = tuple(np.array(a) for a in (rbm.fast_components_, rbm.fast_intercept_visible_,
                                           rbm.fast_intercept_hidden_))
    u_h = rng.random((5, nh)).astype(np.float32)
    u_v = rng.random((5, nv)).astype(np.float32)
    rbm._phases.stream = _Scripted([u_h, u_v])
    v = X[2 * n:3 * n]
    rbm.partial_fit(v)
    W, b, c, particles, new_fast = reference_update(
        *before, v, u_h, u_v, fast=fast, lr=0.05, fast_lr=0.03, fast_decay=rbm.fast_decay,
        weight_decay=0.001)
    np.testing.assert_array_equal(particles, rbm.fantasy_particles_)
    for ours, theirs in ((W, rbm.components_), (b, rbm.intercept_visible_), (c, rbm.intercept_hidden_)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    if fast is not None:
        for ours, theirs in zip(new_fast, (rbm.fast_components_, rbm.fast_intercept_visible_,
                                           rbm.fast_intercept_hidden_)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


_RENDER_HARNESS = r"""
#include <cstdio>
#include <vector>
#include "render.cu"
// Runs render.cu's per-pixel functions serially on the host: the kernels' arithmetic
// (coordinates, cells, values, per-pixel gradients) without a GPU. The per-canvas loop
// is render_backward's: a canvas whose pose is not finite skips its pixels and gets
// NaN matrix and intensity gradients (what its lane 0 writes).
int main(int argc, char** argv) {
    FILE* f = fopen(argv[1], "rb");
    int d[6];
    if (fread(d, sizeof(int), 6, f) != 6) return 1;
    const int B = d[0], K = d[1], T0 = d[2], T1 = d[3], H = d[4], W = d[5], N = H * W, TT = T0 * T1;
    std::vector<float> t(K * TT), m(B * K * 9), a(B * K), gy((size_t)B * K * N);
    if (fread(t.data(), 4, t.size(), f) != t.size() || fread(m.data(), 4, m.size(), f) != m.size() ||
        fread(a.data(), 4, a.size(), f) != a.size() || fread(gy.data(), 4, gy.size(), f) != gy.size()) return 1;
    fclose(f);
    std::vector<float> y((size_t)B * K * N), gt(K * TT, 0.f), gm(B * K * 9, 0.f), gi(B * K, 0.f);
    for (long long i = 0; i < (long long)y.size(); ++i)
        y[i] = forward_pixel(t.data(), m.data(), a.data(), i, K, T0, T1, H, W);
    const float bad = qnan_<float>();
    for (int k = 0; k < K; ++k)
        for (int b = 0; b < B; ++b) {
            const long long bk = (long long)b * K + k;
            const Pose<float> P = load_pose(m.data() + bk * 9, T0, T1);
            float s[7] = {0, 0, 0, 0, 0, 0, 0};
            if (P.finite)
                for (int pix = 0; pix < N; ++pix)
                    backward_pixel(t.data() + k * TT, P, a[bk], gy[bk * N + pix], pix, T0, T1, H, W,
                                   true, true, gt.data() + k * TT, s);
            for (int j = 0; j < 3; ++j) {
                gm[bk * 9 + j] = P.finite ? T0 * s[j] : bad;
                gm[bk * 9 + 3 + j] = P.finite ? T1 * s[3 + j] : bad;
            }
            gi[bk] = P.finite ? s[6] : bad;
        }
    FILE* o = fopen(argv[2], "wb");
    fwrite(y.data(), 4, y.size(), o); fwrite(gt.data(), 4, gt.size(), o);
    fwrite(gm.data(), 4, gm.size(), o); fwrite(gi.data(), 4, gi.size(), o);
    fclose(o);
    return 0;
}
"""


@pytest.fixture(scope="module")
def render_kernel(tmp_path_factory):
    """_RENDER_HARNESS compiled once for this module: a function ``(templates, matrices,
    intensity, gy) -> (image, g_templates, g_matrices, g_intensity)`` computed by
    render.cu's arithmetic (float32; ``gy``'s last two axes give the canvas size)."""
    d = tmp_path_factory.mktemp("render")
    exe = _build(d, _RENDER_HARNESS, "render")

    def run(templates, m, intensity, gy):
        (B, K), (T0, T1), (H, W) = m.shape[:2], templates.shape[1:], gy.shape[-2:]
        inp, out = d / "in.bin", d / "out.bin"
        with open(inp, "wb") as f:
            np.asarray([B, K, T0, T1, H, W], np.int32).tofile(f)
            for a in (templates, m, intensity, gy):
                np.ascontiguousarray(a, np.float32).tofile(f)
        subprocess.run([str(exe), str(inp), str(out)], check=True, timeout=60)
        flat = np.fromfile(out, np.float32)
        sizes = [B * K * H * W, K * T0 * T1, B * K * 9, B * K]
        y, gt, gm, gi = np.split(flat, np.cumsum(sizes)[:-1])
        return y.reshape(B, K, H, W), gt.reshape(K, T0, T1), gm.reshape(B, K, 3, 3), gi.reshape(B, K)
    return run


def _make_problem(*args, **kwargs):
    """benchmarks/bench_render.py's make_problem."""
    bench = str(KERNEL_DIR.parents[2] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from bench_render import make_problem
    return make_problem(*args, **kwargs)


def _numpy_render(templates, m, intensity, gy):
    """The numpy op's ``(image, g_templates, g_matrices, g_intensity)`` (float32)."""
    import lab.autodiff as ad
    from lab.graphics.acr import render_templates
    xs = [ad.Tensor(np.asarray(a, np.float32), requires_grad=True) for a in (templates, m, intensity)]
    y = render_templates(*xs, gy.shape[-2:])
    y.backward(np.asarray(gy, np.float32))
    return y.data, xs[0].grad, xs[1].grad, xs[2].grad


@needs_nvcc
def test_render_kernel_arithmetic_matches_numpy_op(render_kernel):
    """render.cu's per-pixel functions, compiled for the host, against the numpy op:
    the same images bit for bit where numpy rounds as IEEE float32 without FMAs (this
    machine), the same gradients to float32 accuracy."""
    B, K, T, H = 7, 3, 6, 12
    p = _make_problem(B, K, T, H, seed=3, poses="parts")
    p["matrices"][2, 1, 0, 2] = np.nan                      # a non-finite pose: a NaN canvas
    rng = np.random.default_rng(4)
    gy = rng.standard_normal((B, K, H, H)).astype(np.float32)
    ok = np.isfinite(p["matrices"]).all(axis=(2, 3))
    gy = np.where(ok[:, :, None, None], gy, 0).astype(np.float32)
    args = (p["templates"], p["matrices"], p["intensity"], gy)
    y, g_t, g_m, g_i = _numpy_render(*args)
    yk, gt, gm, gi = render_kernel(*args)
    assert np.isnan(yk[2, 1]).all() and np.isnan(y[2, 1]).all()
    np.testing.assert_array_equal(yk[ok], y[ok])

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel(gt, g_t) < 1e-5
    assert rel(gm[ok], g_m[ok]) < 1e-5
    assert rel(gi[ok], g_i[ok]) < 1e-5


# -- the same comparison on the poses, scales and values a long run can reach ---------
# Templates 4 x 8 and canvases 8 x 16 (powers of two): the hand-made poses below put
# template coordinates exactly where they say (integers, the borders -1 and T). A
# coordinate u of a T0-row template is T0 (M00 p0 + M01 p1 + M02) - 0.5 with the pixel
# centres p0 = (i + 0.5) / 8, p1 = (j + 0.5) / 16; the template is zero outside
# -1 < u < T0, -1 < v < T1.
_EDGE_T0, _EDGE_T1, _EDGE_H, _EDGE_W = 4, 8, 8, 16


def _pose(row0, row1, row2=(0.0, 0.0, 1.0)):
    return np.array([row0, row1, row2], dtype=np.float64)


def _near_singular_inverses():
    """World -> template matrices inverted from nearly singular template -> world ones
    (determinant -eps / 4): huge entries that nearly cancel. The template collapses
    onto the line p0 = 2 p1 through pixel centres ((2i + 1) / 16, (2i + 1) / 32), where
    the cancelling float32 arithmetic decides which pixels land inside it."""
    return [np.linalg.inv(_pose((0.5, 0.5 + eps, 0), (0.25, 0.25, 0))) for eps in (1e-4, 1e-6, 1e-12)]


def _scale_values(scale, seed):
    def edit(t, m, a):
        sign = np.where(np.random.default_rng(seed).random(t.shape) < 0.5, -1.0, 1.0)
        return t * sign * scale, m, a
    return edit


def _set_intensity(*values):
    def edit(t, m, a):
        a = a.copy()
        a[:len(values)] = np.asarray(values, dtype=np.float64)[:, None]
        return t, m, a
    return edit


def _set_template_pixels(pixels):
    def edit(t, m, a):
        t = t.copy()
        for idx, v in pixels:
            t[idx] = v
        return t, m, a
    return edit


_ORDINARY = [_pose((1, 0, 0), (0, 1, 0)),                              # fills the canvas
             _pose((1.2, 0.5, -0.3), (-0.4, 1.3, 0.1)),                # rotated, partly outside
             _pose((2.5, 0.3, -0.6), (-0.2, 2.2, -0.4))]               # a part of the canvas

#: name -> (world -> template poses, one per canvas (both templates get it), an edit
#: of (templates, matrices, intensity) or None)
_EDGE_CASES = {
    # wholly outside on every side, partly outside, mirrored
    "outside": ([_pose((1, 0, 3), (0, 1, 0)), _pose((1, 0, -3), (0, 1, 0)), _pose((1, 0, 0), (0, 1, 2.5)),
                 _pose((1, 0, 0), (0, 1, -2.5)), _pose((1, 0, 1.05), (0, 1, 1.05)), _pose((1, 0, 0.5), (0, 1, 0)),
                 _pose((1, 0, -0.6), (0, 1, 0.7)), _pose((0.8, 0.8, -0.31), (-0.8, 0.8, 0.4)),
                 _pose((-1, 0, 1), (0, -1, 1)), _pose((-1, 0, 0.5), (0, 1, 0))], None),
    # a template one pixel across or far smaller (entries up to 1e37, coordinates up to
    # 8e37; the last pose's coefficients T M overflow to +-inf, its coordinates are +-inf,
    # not NaN); the first two centred on one output pixel
    "huge_scale": ([_pose((1e3, 0, -562.5), (0, 1e3, -531.25)), _pose((1e6, 0, -562500), (0, 1e6, -531250)),
                    _pose((1e20, 0, -0.5e20), (0, 1e20, -0.5e20)), _pose((1e30, 1e29, -3e29), (-1e29, 1e30, 0)),
                    _pose((1e37, 0, 0), (0, 1e37, -1e37)), _pose((3e7, 3e7, -3e7), (-3e7, 3e7, 0.5)),
                    _pose((1e38, 0, 0), (0, -1e38, 0))], None),
    # a template far larger than the canvas: every pixel in one cell (denormal entries,
    # a zero linear part: one template value everywhere, the last exactly template pixel (0, 0))
    "tiny_scale": ([_pose((1e-7, 0, 0.3), (0, 1e-7, 0.4)), _pose((1e-30, 1e-30, 0.25), (-1e-30, 1e-30, 0.125)),
                    _pose((1e-45, 0, 0.5), (0, 3e-42, 0.5)), _pose((1e-7, 0, -0.2), (0, 1e-7, 0.1)),
                    _pose((0, 0, 0.3), (0, 0, 0.4)), _pose((0, 0, 0.125), (0, 0, 0.0625))], None),
    # determinant 0 (rank one, a zero row) and inverses of nearly singular matrices
    "singular": ([_pose((1, 1, -0.5), (1, 1, -0.5)), _pose((0.5, -0.5, 0.2), (-0.5, 0.5, 0.3)),
                  _pose((1, 2, -0.9), (0.5, 1, -0.2)), _pose((0, 0, 0.4), (0.3, 0.7, 0.1)),
                  *_near_singular_inverses()], None),
    # the third row is ignored, non-finite or not
    "third_row": ([_pose((1, 0, 0), (0, 1, 0), (np.nan, np.inf, 0)),
                   _pose((1.2, 0.5, -0.3), (-0.4, 1.3, 0.1), (0, 0, 0))], None),
    # coordinates exactly on template pixels: 0 .. T-1, and T (the upper border: outside);
    # half-integers; mirrored
    "exact_coordinates": ([_pose((2, 0, 0), (0, 2, 0)), _pose((1, 0, 0.0625), (0, 1, 0.03125)),
                           _pose((2, 0, 0.25), (0, 2, 0.125)), _pose((-2, 0, 2), (0, -2, 2)),
                           _pose((1, 0, 0.5625), (0, 1, 0.53125))], None),
    # zero, negative zero, negative, tiny, huge and denormal intensities
    "intensity": (_ORDINARY * 3, _set_intensity(0.0, -0.0, -1.5, 1e-38, 1e30, -1e30, 1e-45, -3.0, 2.0)),
    # templates of huge values (both signs)
    "large_templates": (_ORDINARY + [_pose((1, 0, 0.5), (0, 1, 0))], _scale_values(1e33, 6)),
    # non-finite template pixels (inside: both sides compute the same inf and NaN)
    "nonfinite_templates": (_ORDINARY, _set_template_pixels([((0, 1, 2), np.inf), ((1, 3, 7), -np.inf),
                                                             ((0, 3, 0), np.nan)])),
    # template coordinate exactly -1 (the lower border, outside) in a row or a column
    "lower_border": ([_pose((2, 0, -0.25), (0, 2, -0.125)), _pose((1, 0, -0.1875), (0, 1, 0)),
                      _pose((1, 0, 0), (0, 1, -0.09375))], None),
    # non-finite poses: NaN canvases (NaN entries; infinite entries)
    "nan_pose": ([_pose((1, 0, np.nan), (0, 1, 0)), _pose((1, 0, 0), (np.nan, 1, 0)), *_ORDINARY], None),
    "infinite_pose": ([_pose((np.inf, 0, 0), (0, 1, 0)), _pose((1, 0, 0), (0, -np.inf, 0.5)), *_ORDINARY], None),
    # finite entries whose coefficients T M overflow: inf - inf, NaN coordinates
    "overflowing_pose": ([_pose((1e38, 0, -1e38), (0, 1, 0)), _pose((1, 0, 0), (0, 3e38, -3e38)), *_ORDINARY],
                         None),
    # non-finite intensities: on a canvas filled, partly drawn, not drawn at all
    "nonfinite_intensity": ([*_ORDINARY, _pose((1, 0, 3), (0, 1, 0))] * 2,
                            _set_intensity(np.inf, -np.inf, np.nan, np.nan, np.nan, np.inf, np.inf, -np.inf)),
}


def _edge_problem(case):
    """(templates, matrices, intensity, gy) of one edge case: make_problem's templates
    (K = 2, cut to 4 x 8) and intensities, the case's poses, a random gy."""
    poses, edit = _EDGE_CASES[case]
    B, K = len(poses), 2
    p = _make_problem(B, K, _EDGE_T1, _EDGE_H, seed=5, poses="filling")
    t = p["templates"][:, :_EDGE_T0].astype(np.float64)
    m = np.repeat(np.stack(poses)[:, None], K, axis=1)
    a = p["intensity"].astype(np.float64)
    if edit is not None:
        t, m, a = edit(t, m, a)
    gy = np.random.default_rng(7).standard_normal((B, K, _EDGE_H, _EDGE_W))
    return tuple(np.ascontiguousarray(x, dtype=np.float32) for x in (t, m, a, gy))


def _assert_render_agrees(got, want):
    """The kernels' (image, g_templates, g_matrices, g_intensity) against the numpy op's:
    images bit for bit (NaNs in the same places); gradients non-finite in the same places
    (the same infinities), elsewhere within 1e-5 of the whole array's norm and 1e-3 of
    each template's / canvas's own norm (a gradient that is exactly zero, nothing drawn,
    must be exactly zero on both sides)."""
    np.testing.assert_array_equal(got[0], want[0], err_msg="image")
    # per template, per canvas (matrix), per canvas (intensity)
    for name, a, b, axes in zip(("g_templates", "g_matrices", "g_intensity"), got[1:], want[1:],
                                ((1, 2), (2, 3), ())):
        a, b = a.astype(np.float64), b.astype(np.float64)
        fin = np.isfinite(b)
        np.testing.assert_array_equal(a[~fin], b[~fin], err_msg=f"{name}: non-finite entries")
        d, b = np.where(fin, a - b, 0.0), np.where(fin, b, 0.0)
        bad = np.argwhere(~np.isfinite(d))
        assert not bad.size, (f"{name}: the kernel non-finite where numpy is finite at "
                              f"{[tuple(i) for i in bad[:4]]}: numpy {[b[tuple(i)] for i in bad[:2]]}")
        err, scale = np.linalg.norm(d), np.linalg.norm(b)
        assert err <= 1e-5 * scale, f"{name}: relative difference {err / scale:.3g}"
        err, scale = (np.sqrt(np.sum(x * x, axis=axes)) for x in (d, b))
        bad = np.argwhere(err > 1e-3 * scale)
        assert not bad.size, (f"{name} differs at {[tuple(i) for i in bad[:4]]}: kernel "
                              f"{[a[tuple(i)] for i in bad[:2]]} numpy {[b[tuple(i)] for i in bad[:2]]}")


#: (case, numpy path) -> the disagreement found (strict: it must still fail)
_EDGE_XFAIL = {
    ("lower_border", "dense"): pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        "matrix gradients at template coordinate exactly -1 (outside: -1 < u < T0 on both sides): numpy's "
        "dense path (acr.py _footprint: xp.clip(uv, 0, uvclip) leaves u' = u + PAD = 1, floor puts it in "
        "the cell whose lower corners are template row 0) adds that row's slope c2 + c3 wv times g to "
        "d loss/d M; render.cu's bilinear() says outside and backward_pixel adds nothing, as numpy's sparse "
        "path does (agreeing with the kernel to 1.5e-7). g_matrices differ by 0.46 of their norm (canvas 0, "
        "row 1: kernel (8.66, 6.80, 24.12), numpy dense (3.30, 6.26, 6.83)); images, template and "
        "intensity gradients agree")),
    ("nonfinite_intensity", "dense"): pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        "an intensity of NaN or -inf on a canvas the template does not reach (canvases 3 and 7): both "
        "images are NaN everywhere (0 x intensity), but numpy's dense path also gives NaN matrix "
        "gradients (acr.py _backward_k: slopes 0 times g = gy x intensity, duv *= g) where render.cu "
        "skips every pixel outside the footprint (backward_pixel: if (!sm.inside) return) and gives 0, "
        "as numpy's sparse path does; everything else agrees")),
    ("nonfinite_intensity", "sparse"): pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
        "images with an intensity of +-inf or NaN: render.cu's forward_pixel multiplies every pixel's "
        "value by the intensity, so pixels outside the footprint render 0 x inf = NaN (a canvas the "
        "template does not reach: all NaN; numpy's dense path does the same), numpy's sparse path writes "
        "only the pixels inside and leaves 0 outside (e.g. 32 of 128 pixels NaN vs 0 on a partly drawn "
        "canvas, 128 vs 0 on an undrawn one); the gradients agree")),
}


def _edge_params():
    return [pytest.param(case, path, id=f"{case}-{path}", marks=_EDGE_XFAIL.get((case, path), ()))
            for case in _EDGE_CASES for path in ("dense", "sparse")]


@needs_nvcc
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case,path", _edge_params())
def test_render_kernel_matches_numpy_op_at_edges(case, path, render_kernel, monkeypatch):
    """The kernel-vs-numpy comparison of the test above on poses, scales and values that
    a long training run can reach (see _EDGE_CASES), through either numpy path: dense
    chunks (every pixel computed, coordinates clipped into a zero border) and sparse
    ones (only the pixels inside footprints)."""
    from lab.graphics import acr
    monkeypatch.setattr(acr, "DENSE_FRACTION", -1.0 if path == "dense" else 1.0)
    args = _edge_problem(case)
    _assert_render_agrees(render_kernel(*args), _numpy_render(*args))


def _column_major_gemm(opx, opy, m, n, k, x, ldx, y, ldy, c, ldc):
    """What cuBLAS's gemm does to flat buffers: C (m x n, column-major, leading dimension
    ldc) = op(X) op(Y), each operand read column-major with its leading dimension."""
    from numpy.lib.stride_tricks import as_strided
    item = c.itemsize

    def mat(buf, rows, cols, ld):
        return as_strided(buf, shape=(rows, cols), strides=(item, ld * item))
    X = mat(x, *((m, k) if opx == 0 else (k, m)), ldx)
    Y = mat(y, *((k, n) if opy == 0 else (n, k)), ldy)
    mat(c, m, n, ldc)[...] = (X if opx == 0 else X.T) @ (Y if opy == 0 else Y.T)


@pytest.mark.parametrize("transa", ["N", "T"])
@pytest.mark.parametrize("transb", ["N", "T"])
def test_cublas_row_major_arguments(transa, transb, rng):
    """lab.gpu.cublas translates a row-major product (operands that are row slices of
    wider arrays included) into the column-major call cuBLAS makes: checked here by
    playing cuBLAS's part in numpy on the same flat buffers."""
    from lab.gpu.cublas import gemm_arguments
    M, N, K = 5, 4, 3
    a_full = rng.standard_normal((9, 8))          # op(a) is MxK, stored in wider rows
    b_full = rng.standard_normal((9, 7))
    a = a_full[2:2 + M, :K] if transa == "N" else a_full[1:1 + K, :M]
    b = b_full[:K, :N] if transb == "N" else b_full[3:3 + N, :K]
    out_full = np.zeros((M + 2, N + 3))
    opx, opy, m, n, k, ldx, ldy, ldc = gemm_arguments(
        transa, transb, a.shape, 8, b.shape, 7, (M, N), N + 3)
    start = lambda arr, full: (arr.__array_interface__["data"][0] - full.__array_interface__["data"][0]) // 8
    _column_major_gemm(opx, opy, m, n, k, b_full.ravel()[start(b, b_full):], ldx,
                       a_full.ravel()[start(a, a_full):], ldy, out_full.ravel()[N + 3:], ldc)
    want = (a if transa == "N" else a.T) @ (b if transb == "N" else b.T)
    np.testing.assert_allclose(out_full[1:1 + M, :N], want, rtol=1e-12)
    assert not out_full[0].any() and not out_full[1 + M:].any() and not out_full[:, N:].any()


def test_cublas_arguments_refuse_mismatches():
    from lab.gpu.cublas import gemm_arguments
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm_arguments("N", "N", (2, 3), 3, (4, 2), 2, (2, 2), 2)
    with pytest.raises(ValueError, match="out must be"):
        gemm_arguments("N", "T", (2, 3), 3, (4, 3), 3, (2, 3), 3)
    with pytest.raises(ValueError, match="row stride"):
        gemm_arguments("N", "N", (2, 3), 2, (3, 2), 2, (2, 2), 2)
    with pytest.raises(ValueError, match="transa"):
        gemm_arguments("C", "N", (2, 3), 3, (3, 2), 2, (2, 2), 2)


def _harness_main(n_header: int, args: str) -> str:
    """A host harness's main(): reads ``n_header`` int64s (the last one the item size, 4 or
    8), then calls ``run<float>`` or ``run<double>(f, o, args)`` with the input and output
    files; the harness defines ``run``."""
    return f"""int main(int argc, char** argv) {{
    FILE* f = fopen(argv[1], "rb");
    long long d[{n_header}];
    if (fread(d, 8, {n_header}, f) != {n_header}) return 1;
    FILE* o = fopen(argv[2], "wb");
    const int rc = d[{n_header - 1}] == 4 ? run<float>(f, o, {args}) : run<double>(f, o, {args});
    fclose(f); fclose(o);
    return rc;
}}
"""


_OPTIM_HARNESS = r"""
#include <cstdio>
#include <vector>
#include "optim.cu"
// optim.cu's conservative_element, serially on the host, over one parameter.
template <typename T> int run(FILE* f, FILE* o, long long n, int n_avg, int mask, int first) {
    double coef[16];
    if (fread(coef, 8, 16, f) != 16) return 1;
    T alpha[4], keep[MAX_AVERAGES], w[MAX_AVERAGES];
    for (int j = 0; j < 4; ++j) alpha[j] = (T)coef[j];
    for (int k = 0; k < MAX_AVERAGES; ++k) { keep[k] = (T)coef[4 + k]; w[k] = (T)coef[10 + k]; }
    std::vector<T> g(n), data(n), avg(n * n_avg);
    if (fread(g.data(), sizeof(T), n, f) != (size_t)n || fread(data.data(), sizeof(T), n, f) != (size_t)n ||
        fread(avg.data(), sizeof(T), n * n_avg, f) != (size_t)(n * n_avg)) return 1;
    for (long long i = 0; i < n; ++i) {
        T* ptr[MAX_AVERAGES];
        for (int k = 0; k < n_avg; ++k) ptr[k] = avg.data() + k * n + i;
        conservative_element(g[i], data.data() + i, ptr, n_avg, mask, first != 0, alpha, keep, w);
    }
    fwrite(data.data(), sizeof(T), n, o); fwrite(avg.data(), sizeof(T), n * n_avg, o);
    return 0;
}
""" + _harness_main(5, "d[0], (int)d[1], (int)d[2], (int)d[3]")


def _build(tmp_path, text, name):
    (tmp_path / f"{name}_harness.cu").write_text(text)
    exe = tmp_path / name
    res = subprocess.run([NVCC, "-std=c++17", "-Xcompiler", "-ffp-contract=off", f"-I{KERNEL_DIR}",
                          "-o", str(exe), str(tmp_path / f"{name}_harness.cu")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return exe


@needs_nvcc
def test_optimizer_kernel_arithmetic_equals_numpy_optimizer(tmp_path, rng):
    """optim.cu's per-element step, compiled for the host, against ConservativeOptimizer's
    numpy step from the same state: the same bits (zero, NaN, tiny and huge gradients;
    both readings of when the averages update; float32 and float64; a cut step scale)."""
    import math
    from lab.autodiff import Tensor
    from lab.optim import ConservativeOptimizer
    from lab.optim.conservative_gpu import coefficients
    exe = _build(tmp_path, _OPTIM_HARNESS, "optim")
    n = 600
    for dtype in (np.float32, np.float64):
        for gammas in ((1.0, math.exp(3.0), math.exp(6.0)), (math.exp(3.0),), (1.0, 2.0, 5.0, 9.0, 20.0, 1.0)):
            for update_first in (True, False):
                g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 2, n)).astype(dtype)
                g[:7] = 0.0
                g[7] = np.nan
                data = rng.standard_normal(n).astype(dtype)
                avgs = [(rng.random(n) * 10.0 ** rng.uniform(-8, 1, n)).astype(dtype) for _ in gammas]
                avgs[0][10:13] = 0.0
                w = Tensor(data.copy(), requires_grad=True)
                opt = ConservativeOptimizer({"w": w}, gammas=gammas, update_first=update_first, record_every=0)
                opt.state["w"] = {f"avg{k}": a.copy() for k, a in enumerate(avgs)}
                opt.state["w"]["ready"] = 1
                opt.scale_step_sizes(0.5)
                w.grad = g.copy()
                opt.step()
                coef, mask = coefficients(tuple(a * 0.5 for a in opt.alphas), gammas)
                inp = tmp_path / "in.bin"
                with open(inp, "wb") as f:
                    np.asarray([n, len(gammas), mask, int(update_first), np.dtype(dtype).itemsize], np.int64).tofile(f)
                    coef.tofile(f)
                    for a in (g, data, *avgs):
                        a.tofile(f)
                out = tmp_path / "out.bin"
                subprocess.run([str(exe), str(inp), str(out)], check=True, timeout=60)
                got = np.fromfile(out, dtype).reshape(1 + len(gammas), n)
                np.testing.assert_array_equal(got[0], w.data, err_msg=f"{dtype} {gammas} {update_first}")
                for k in range(len(gammas)):
                    np.testing.assert_array_equal(got[1 + k], opt.state["w"][f"avg{k}"])


_NTM_HARNESS = r"""
#include <cstdio>
#include <vector>
#include "ntm.cu"
template <typename T> int run(FILE* f, FILE* o, long long n) {
    std::vector<T> nice(6 * n), gy(9 * n), m(9 * n), g(6 * n);
    if (fread(nice.data(), sizeof(T), 6 * n, f) != (size_t)(6 * n) ||
        fread(gy.data(), sizeof(T), 9 * n, f) != (size_t)(9 * n)) return 1;
    for (long long i = 0; i < n; ++i) {
        ntm_forward_one(nice.data() + 6 * i, m.data() + 9 * i);
        ntm_backward_one(nice.data() + 6 * i, gy.data() + 9 * i, g.data() + 6 * i);
    }
    fwrite(m.data(), sizeof(T), 9 * n, o); fwrite(g.data(), sizeof(T), 6 * n, o);
    return 0;
}
""" + _harness_main(2, "d[0]")


@needs_nvcc
def test_ntm_kernel_arithmetic_matches_numpy_op(tmp_path, rng):
    """ntm.cu's per-pose forward and backward, compiled for the host, against the numpy
    NTM op (cos/sin may differ in the last bit; everything else is numpy's order)."""
    from lab.autodiff import Tensor
    from lab.graphics.ntm import nice_to_matrix
    exe = _build(tmp_path, _NTM_HARNESS, "ntm")
    n = 300
    for dtype, tol in ((np.float32, 2e-6), (np.float64, 1e-14)):
        nice = (rng.standard_normal((n, 6)) * 2).astype(dtype)
        gy = rng.standard_normal((n, 3, 3)).astype(dtype)
        x = Tensor(nice.copy(), requires_grad=True)
        y = nice_to_matrix(x)
        y.backward(gy)
        inp = tmp_path / "in.bin"
        with open(inp, "wb") as f:
            np.asarray([n, np.dtype(dtype).itemsize], np.int64).tofile(f)
            nice.tofile(f)
            gy.tofile(f)
        out = tmp_path / "out.bin"
        subprocess.run([str(exe), str(inp), str(out)], check=True, timeout=60)
        flat = np.fromfile(out, dtype)
        m, g = flat[:9 * n].reshape(n, 3, 3), flat[9 * n:].reshape(n, 6)
        np.testing.assert_allclose(m, y.data, rtol=tol, atol=tol)
        np.testing.assert_allclose(g, x.grad, rtol=tol * 10, atol=tol * 10)
