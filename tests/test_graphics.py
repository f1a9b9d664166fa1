"""lab.graphics: NTM/INTM, MIGP, the fused ACR render op and the output models (thesis 2.3)."""
import math

import numpy as np
import pytest

import lab.autodiff as ad
import lab.graphics as g
from lab.autodiff import Tensor, gradcheck

GRAPHICS_OPS = ["nice_to_matrix", "igeo_nice_to_igeo", "determinant", "render_templates", "compose",
                "max_semi_soft", "output_model"]


def _poses(rng, b, k, spread=1.0):
    n = np.empty((b, k, 6))
    n[..., :2] = rng.uniform(-0.3, 0.3, (b, k, 2)) * spread
    n[..., 2:4] = rng.uniform(0.8, 2.5, (b, k, 2))
    n[..., 4] = rng.uniform(-0.4, 0.4, (b, k)) * spread
    n[..., 5] = rng.uniform(-np.pi, np.pi, (b, k)) * spread
    return n


def _render(t, nice, size, intensity=None):
    nice = np.asarray(nice, dtype=float).reshape(1, 1, 6)
    m = g.nice_to_matrix(nice).data
    i = np.ones((1, 1)) if intensity is None else np.full((1, 1), intensity)
    return g.render_templates(t[None], m, i, size).data[0, 0]


# -- gradient checks ------------------------------------------------------------------
@pytest.mark.parametrize("name", GRAPHICS_OPS)
def test_graphics_op_is_registered_and_passes_gradcheck(name):
    spec = ad.REGISTRY[name]
    assert spec.doc
    for fn, inputs in spec.cases(np.random.default_rng(7)):
        assert gradcheck(fn, inputs)


@pytest.mark.parametrize("wrt", [0, 1, 2])
def test_render_gradcheck_each_input_separately(wrt):
    rng = np.random.default_rng(wrt)
    t = rng.standard_normal((3, 5, 4))
    m = g.nice_to_matrix(_poses(rng, 2, 3)).data
    i = rng.uniform(0.2, 1.5, (2, 3))
    assert gradcheck(lambda a, b, c: g.render_templates(a, b, c, (9, 8)), [t, m, i], wrt=[wrt],
                     n_directions=5)


def test_render_gradcheck_through_the_whole_decoder_chain():
    """nice -> NTM -> MIGP -> ACR -> maxSemiSoft -> squared error, all in float64."""
    rng = np.random.default_rng(3)
    target = rng.uniform(0, 1, (2, 6, 6))

    def loss(templates, cc_nice, ac_nice, ac_int):
        cc_m = g.nice_to_matrix(cc_nice)
        m, i = g.compose(cc_m, np.ones(2), g.nice_to_matrix(ac_nice), ac_int)
        img = g.output_model(g.render_templates(templates, m, i, 6), "max_semi_soft")
        return ad.sum(ad.square(img - target))
    cc = _poses(rng, 2, 1, 0.3)[:, 0]
    cc[:, 2:4] = 1.0 + rng.uniform(-0.1, 0.1, (2, 2))
    assert gradcheck(loss, [rng.uniform(0, 1, (3, 4, 4)), cc, _poses(rng, 2, 3), rng.uniform(0.3, 1, (2, 3))],
                     atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dense_fraction", [0.0, 0.5, 2.0])   # all dense, mixed, all compacted
def test_render_gradcheck_with_empty_canvases_and_many_chunks(monkeypatch, dense_fraction):
    """Canvases whose template lies wholly off-canvas (empty footprints) between others,
    and chunks much smaller than the batch: the per-canvas sums must stay aligned, in
    dense chunks (clipped coordinates) and compacted ones (footprint pixels only)."""
    from lab.graphics import acr
    monkeypatch.setattr(acr, "CHUNK_PIXELS", 2 * 36)           # two 6x6 canvases per chunk
    monkeypatch.setattr(acr, "DENSE_FRACTION", dense_fraction)
    rng = np.random.default_rng(11)
    nice = _poses(rng, 7, 2)
    nice[1, :, 0] = 3.0                                          # canvas 1: both templates far off
    nice[4, 0, 1] = -4.0
    nice[5, 1, 0] = 2.5
    nice[6, :, 0] = 3.0                                          # empty trailing canvases
    t, m, i = rng.standard_normal((2, 4, 5)), g.nice_to_matrix(nice).data, rng.uniform(0.3, 1.5, (7, 2))
    y = g.render_templates(t, m, i, 6).data
    assert np.all(y[1] == 0) and np.all(y[4, 0] == 0) and np.all(y[6] == 0) and np.abs(y[2]).sum() > 0
    np.testing.assert_allclose(y, _reference_render(t, m, i, (6, 6)), atol=1e-12)
    assert gradcheck(lambda a, b, c: g.render_templates(a, b, c, 6), [t, m, i], n_directions=4)


def test_render_threads_give_identical_results():
    from lab.graphics import threads
    rng = np.random.default_rng(13)
    t = rng.uniform(0, 1, (5, 11, 11)).astype(np.float32)
    m = g.nice_to_matrix(_poses(rng, 30, 5)).data.astype(np.float32)
    i = rng.uniform(0, 1, (30, 5)).astype(np.float32)
    w = rng.standard_normal((30, 5, 28, 28)).astype(np.float32)
    results = []
    old = threads.RENDER_THREADS
    try:
        for n in (1, 2, 3):
            threads.set_render_threads(n)
            xs = [Tensor(a, requires_grad=True) for a in (t, m, i)]
            y = g.render_templates(*xs)
            (y * w).sum().backward()
            results.append([y.data] + [x.grad for x in xs])
    finally:
        threads.set_render_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_render_works_in_a_forked_child():
    """A forked child inherits the thread pool object but not its threads."""
    import os
    from lab.graphics import threads
    old = threads.RENDER_THREADS
    threads.set_render_threads(2)
    try:
        t = np.random.default_rng(14).uniform(0, 1, (3, 5, 5))
        m = g.nice_to_matrix(np.tile(np.array(g.IDENTITY_NICE), (2, 3, 1))).data
        a = g.render_templates(t, m, np.ones((2, 3)), 8).data
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = np.array_equal(a, g.render_templates(t, m, np.ones((2, 3)), 8).data)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert status == 0
    finally:
        threads.set_render_threads(old)


def test_non_finite_pose_renders_nan_only_on_its_canvas():
    rng = np.random.default_rng(15)
    t = rng.uniform(0, 1, (2, 5, 5))
    m = g.nice_to_matrix(_poses(rng, 3, 2)).data
    m[1, 0, 0, 1] = np.nan
    m[2, 1, 1, 2] = np.inf
    y = g.render_templates(t, m, np.ones((3, 2)), 8).data
    assert np.isnan(y[1, 0]).all() and np.isnan(y[2, 1]).all()
    assert np.isfinite(y[0]).all() and np.isfinite(y[1, 1]).all() and np.isfinite(y[2, 0]).all()


@pytest.mark.parametrize("dense", [True, False])
def test_non_finite_and_overflowing_poses_through_the_backward(dense, monkeypatch):
    """Both numpy paths (dense chunks clip coordinates, sparse ones gather the inside
    pixels), as render.cu: a non-finite pose gives a NaN canvas and NaN gradients for its
    matrix (rows 0-1) and intensity, nothing else; a finite pose whose T M overflows float32
    has no footprint (a zero canvas). Dense chunks used to crash in the backward (a NaN
    coordinate cast to a cell index)."""
    from lab.graphics import acr
    monkeypatch.setattr(acr, "DENSE_FRACTION", -1.0 if dense else 1.0)
    rng = np.random.default_rng(16)
    m = g.nice_to_matrix(_poses(rng, 4, 2)).data.astype(np.float32)
    m[1, 0, 0, 1] = np.nan
    m[2, 1, 1, 2] = -np.inf
    m[3, 0, 0] = (3e38, 0, -3e38)
    xs = [Tensor(rng.uniform(0, 1, (2, 5, 5)).astype(np.float32), requires_grad=True),
          Tensor(m, requires_grad=True), Tensor(np.ones((4, 2), np.float32), requires_grad=True)]
    y = g.render_templates(*xs, 8)
    y.backward(rng.standard_normal(y.shape).astype(np.float32))
    bad = np.zeros((4, 2), bool)
    bad[1, 0] = bad[2, 1] = True
    assert np.isnan(y.data[bad]).all() and np.isfinite(y.data[~bad]).all()
    assert (y.data[3, 0] == 0).all()                      # overflow: no footprint
    assert np.isnan(xs[1].grad[bad][:, :2]).all() and (xs[1].grad[bad][:, 2] == 0).all()
    assert np.isfinite(xs[1].grad[~bad]).all() and np.isnan(xs[2].grad[bad]).all()
    assert np.isfinite(xs[2].grad[~bad]).all() and np.isfinite(xs[0].grad).all()


def test_render_without_gradients_keeps_no_state():
    rng = np.random.default_rng(12)
    t = Tensor(rng.uniform(0, 1, (2, 5, 5)), requires_grad=True)
    m = g.nice_to_matrix(_poses(rng, 3, 2)).data
    with ad.no_grad():
        y = g.render_templates(t, m, np.ones((3, 2)), 8)
    assert y.creator is None
    y2 = g.render_templates(t, m, np.ones((3, 2)), 8)
    np.testing.assert_array_equal(y.data, y2.data)
    assert y2.creator.chunks


def test_float32_gradients_agree_with_float64():
    rng = np.random.default_rng(5)
    t = rng.uniform(0, 1, (4, 11, 11))
    m = g.nice_to_matrix(_poses(rng, 6, 4)).data
    i = rng.uniform(0.2, 1.5, (6, 4))
    w = rng.standard_normal((6, 4, 28, 28))
    grads = {}
    for dt in (np.float32, np.float64):
        xs = [Tensor(a.astype(dt), requires_grad=True) for a in (t, m, i)]
        y = g.render_templates(*xs, (28, 28))
        assert y.dtype == dt
        (y * w.astype(dt)).sum().backward()
        grads[dt] = [x.grad for x in xs]
        assert all(gr.dtype == dt for gr in grads[dt])
    for a, b in zip(grads[np.float32], grads[np.float64]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max())


# -- NTM / INTM -----------------------------------------------------------------------
def _translate(a, b):
    return np.array([[1, 0, a], [0, 1, b], [0, 0, 1.0]])


def test_ntm_is_the_documented_product_of_elementary_matrices():
    rng = np.random.default_rng(0)
    for t0, t1, s0, s1, z, th in _poses(rng, 5, 1)[:, 0]:
        rot = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
        shear = np.array([[1, z, 0], [0, 1, 0], [0, 0, 1.0]])
        scale = np.diag([s0, s1, 1.0])
        expected = _translate(0.5, 0.5) @ rot @ shear @ scale @ _translate(t0, t1) @ _translate(-0.5, -0.5)
        got = g.nice_to_matrix(np.array([t0, t1, s0, s1, z, th])).data
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_ntm_identity_determinant_and_template_centre():
    np.testing.assert_allclose(g.nice_to_matrix(np.array(g.IDENTITY_NICE)).data, np.eye(3), atol=1e-15)
    nice = np.array([0.1, -0.2, 1.7, 0.6, 0.3, 0.4])
    m = g.nice_to_matrix(nice).data
    assert np.linalg.det(m) == pytest.approx(1.7 * 0.6)          # det = s0 s1
    assert g.determinant(m).data == pytest.approx(1.7 * 0.6)
    centre = np.linalg.solve(m, [0.5, 0.5, 1.0])                  # world point seeing the template centre
    np.testing.assert_allclose(centre[:2], [0.5 - 0.1, 0.5 + 0.2])
    assert g.FILL_DETERMINANT == 1.0


def test_intm_splits_matrix_and_intensity():
    nice7 = np.array([[0.1, 0.2, 1.1, 0.9, 0.05, 0.3, 0.7]])
    m, i = g.igeo_nice_to_igeo(nice7)
    np.testing.assert_allclose(m.data, g.nice_to_matrix(nice7[:, :6]).data)
    np.testing.assert_allclose(i.data, [0.7])


# -- ACR: where the ink goes ------------------------------------------------------------
def test_identity_pose_stretches_the_template_over_the_canvas():
    t = np.random.default_rng(1).uniform(0, 1, (7, 7))
    np.testing.assert_allclose(_render(t, g.IDENTITY_NICE, 7), t, atol=1e-15)
    # and at an 11 -> 28 canvas the canvas-filling template covers every output pixel
    t11 = np.ones((11, 11))
    img = _render(t11, g.IDENTITY_NICE, 28)
    assert img.min() > 0.4 and img[5:23, 5:23].min() == pytest.approx(1.0)


def test_rotation_by_quarter_turn_is_rot90():
    t = np.random.default_rng(2).uniform(0, 1, (9, 9))
    for k, th in ((-1, np.pi / 2), (1, -np.pi / 2), (2, np.pi)):
        nice = list(g.IDENTITY_NICE)
        nice[5] = th
        np.testing.assert_allclose(_render(t, nice, 9), np.rot90(t, k), atol=1e-12)


def test_translation_by_whole_pixels_shifts_the_image():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 1, (11, 11))
    base = np.array([0.0, 0.0, 28 / 11, 2.0, 0.2, 0.3])           # a small, sheared, rotated template
    img = _render(t, base, 28)
    assert img.sum() > 1.0
    for di, dj in ((3, 0), (0, -4), (-2, 5)):
        moved = base.copy()
        moved[0] -= di / 28                                        # t moves the world point: -t moves the ink
        moved[1] -= dj / 28
        shifted = _render(t, moved, 28)
        np.testing.assert_allclose(shifted, np.roll(img, (di, dj), axis=(0, 1)), atol=1e-12)


def test_template_at_native_size_lands_pixel_for_pixel():
    """s = H / T makes template pixels the size of canvas pixels; odd sizes share a centre pixel."""
    t = np.random.default_rng(4).uniform(0, 1, (11, 11))
    img = _render(t, [0, 0, 27 / 11, 27 / 11, 0, 0], 27)
    np.testing.assert_allclose(img[8:19, 8:19], t, atol=1e-12)
    assert np.abs(img).sum() == pytest.approx(t.sum())


def test_intensity_scales_and_template_is_zero_outside():
    t = np.ones((5, 5))
    img = _render(t, [0.3, 0, 3.0, 3.0, 0, 0], 30, intensity=0.5)
    assert img.max() == pytest.approx(0.5)
    assert img[:, :8].max() == 0 and img[:, -8:].max() == 0       # far from the template: exactly zero
    assert img[-1].max() == 0                                       # moved up (t0 > 0): the bottom is empty


def _reference_render(templates, mats, intensity, size):
    """Plain loops over output pixels: bilinear between template points, zero outside."""
    K, T0, T1 = templates.shape
    B = mats.shape[0]
    H, W = size
    out = np.zeros((B, K, H, W))
    for b in range(B):
        for k in range(K):
            for i in range(H):
                for j in range(W):
                    p = np.array([(i + 0.5) / H, (j + 0.5) / W, 1.0])
                    q = mats[b, k] @ p
                    u, v = q[0] * T0 - 0.5, q[1] * T1 - 0.5
                    total = 0.0
                    for r in (math.floor(u), math.floor(u) + 1):
                        for c in (math.floor(v), math.floor(v) + 1):
                            if 0 <= r < T0 and 0 <= c < T1:
                                total += (1 - abs(u - r)) * (1 - abs(v - c)) * templates[k, r, c]
                    out[b, k, i, j] = intensity[b, k] * total
    return out


def test_fast_renderer_equals_brute_force_reference():
    rng = np.random.default_rng(5)
    t = rng.standard_normal((2, 4, 6))
    m = g.nice_to_matrix(_poses(rng, 3, 2)).data
    i = rng.uniform(-1, 2, (3, 2))
    fast = g.render_templates(t, m, i, (7, 9)).data
    np.testing.assert_allclose(fast, _reference_render(t, m, i, (7, 9)), atol=1e-12)
    # far outside (a huge translation) and hugely magnified poses too
    m2 = g.nice_to_matrix(np.array([[[5.0, -3.0, 1, 1, 0, 0], [0.1, 0.05, 0.05, 0.07, 0.2, 1.0]]])).data
    fast = g.render_templates(t, m2, np.ones((1, 2)), (5, 5)).data
    np.testing.assert_allclose(fast, _reference_render(t, m2, np.ones((1, 2)), (5, 5)), atol=1e-12)
    assert np.all(fast[0, 0] == 0)


def test_float32_render_matches_float64():
    rng = np.random.default_rng(6)
    t = rng.uniform(0, 1, (9, 11, 11))
    m = g.nice_to_matrix(_poses(rng, 20, 9)).data
    i = rng.uniform(0, 1, (20, 9))
    y64 = g.render_templates(t, m, i).data
    y32 = g.render_templates(t.astype(np.float32), m.astype(np.float32), i.astype(np.float32)).data
    assert y32.dtype == np.float32 and y32.shape == (20, 9, 28, 28)
    np.testing.assert_allclose(y32, y64, atol=1e-4)


# -- MIGP -------------------------------------------------------------------------------
def test_compose_order_and_broadcast():
    rng = np.random.default_rng(8)
    cc = g.nice_to_matrix(_poses(rng, 4, 1)[:, 0]).data                # (4, 3, 3)
    ac = g.nice_to_matrix(_poses(rng, 4, 3)).data                      # (4, 3, 3, 3)
    m, i = g.compose(cc, np.full(4, 0.5), ac, np.full((4, 3), 0.8))
    assert m.shape == (4, 3, 3, 3) and i.shape == (4, 3)
    np.testing.assert_allclose(m.data, ac @ cc[:, None])
    np.testing.assert_allclose(i.data, 0.4)


def test_identity_ac_inside_a_cc_is_drawn_where_the_cc_is():
    rng = np.random.default_rng(9)
    t = rng.uniform(0, 1, (1, 11, 11))
    cc_nice = np.array([[0.1, -0.15, 1.8, 2.2, 0.1, 0.5]])
    cc = g.nice_to_matrix(cc_nice)
    ac = g.nice_to_matrix(np.array(g.IDENTITY_NICE)[None, None])
    m, i = g.compose(cc, np.ones(1), ac, np.ones((1, 1)))
    direct = g.nice_to_matrix(cc_nice[:, None])
    np.testing.assert_allclose(g.render_templates(t, m, i).data,
                               g.render_templates(t, direct, np.ones((1, 1))).data, atol=1e-12)


def test_compose_moves_parts_with_the_composite():
    """Translating the CC by whole pixels moves the rendered AC by the same pixels."""
    rng = np.random.default_rng(10)
    t = rng.uniform(0, 1, (1, 11, 11))
    ac = g.nice_to_matrix(np.array([[[0.05, -0.1, 2.0, 1.5, 0.0, 0.7]]]))
    imgs = []
    for shift in (0, 3):
        cc = g.nice_to_matrix(np.array([[-shift / 28, 0.0, 1.0, 1.0, 0.0, 0.0]]))
        m, i = g.compose(cc, np.ones(1), ac, np.ones((1, 1)))
        imgs.append(g.render_templates(t, m, i).data[0, 0])
    assert imgs[0][0].max() == 0 and imgs[0][-3:].max() == 0 and imgs[0].sum() > 1
    np.testing.assert_allclose(imgs[1], np.roll(imgs[0], 3, axis=0), atol=1e-12)


# -- OM ---------------------------------------------------------------------------------
def test_max_semi_soft_is_exactly_zero_for_zeros_and_stable():
    for dt in (np.float32, np.float64):
        assert np.all(g.output_model(np.zeros((2, 9, 4, 4), dt), "max_semi_soft").data == 0)
    for big in (10.0, 1e3, 1e30):
        a = np.zeros((1, 9, 2, 2))
        a[0, 3] = big
        y = Tensor(a, requires_grad=True)
        out = g.output_model(y, "max_semi_soft")
        out.sum().backward()
        assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(y.grad))
        np.testing.assert_allclose(out.data, big - np.log(9) / 100, rtol=1e-12)
    a = np.random.default_rng(0).uniform(0, 1, (2, 9, 3, 3))
    ref = np.log(np.exp(100 * a).sum(1)) / 100 - np.log(9) / 100
    np.testing.assert_allclose(g.output_model(a, "max_semi_soft").data, ref, rtol=1e-12)


def test_output_models_match_their_formulas():
    a = np.random.default_rng(1).uniform(0, 0.6, (2, 4, 3, 3))
    s = a.sum(1)
    expected = {
        "sum": s, "max": a.max(1), "max_soft": np.log(np.exp(a).sum(1)),
        "max_semi_soft": np.log(np.exp(100 * a).sum(1)) / 100 - np.log(4) / 100,
        "sigmoid_sum": 1 / (1 + np.exp(-s)), "sum_clip": np.minimum(s, 1),
        "sum_clip_soft": s - np.log1p(np.exp(10 * (s - 1))) / 10 + np.log1p(np.exp(-10)) / 10,
    }
    assert set(expected) == set(g.OUTPUT_MODELS)
    for kind, e in expected.items():
        np.testing.assert_allclose(g.output_model(a, kind).data, e, rtol=1e-12, err_msg=kind)
    assert g.output_model(np.zeros((1, 3, 2, 2)), "sum_clip_soft").data.max() == 0


# -- errors -----------------------------------------------------------------------------
def test_errors_name_the_argument():
    t, m, i = np.zeros((2, 5, 5)), np.tile(np.eye(3), (3, 2, 1, 1)), np.ones((3, 2))
    with pytest.raises(ValueError, match="templates"):
        g.render_templates(np.zeros((5, 5)), m, i)
    with pytest.raises(ValueError, match="world_to_template"):
        g.render_templates(t, np.tile(np.eye(3), (3, 4, 1, 1)), i)
    with pytest.raises(ValueError, match="intensity"):
        g.render_templates(t, m, np.ones((3, 3)))
    with pytest.raises(TypeError, match="templates"):
        g.render_templates(np.zeros((2, 5, 5), dtype=int), m, i)
    with pytest.raises(ValueError, match="size"):
        g.render_templates(t, m, i, (28, 0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        g.nice_to_matrix(np.zeros((3, 7)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        g.igeo_nice_to_igeo(np.zeros((3, 6)))
    with pytest.raises(ValueError, match="3, 3"):
        g.compose(np.eye(2), np.ones(()), np.eye(3), np.ones(()))
    with pytest.raises(ValueError, match="max_semi_soft"):
        g.output_model(np.zeros((1, 2, 3, 3)), "median")
