"""Capsule autoencoder components (thesis 2.2-2.4): gradients, test-time network, regularizers."""
import time

import numpy as np
import pytest

from lab.autodiff import Tensor, gradcheck
from lab.backend import RandomStream
from lab.capsules import (ACR, CCR, GPNN, RMM, TMM, CapsuleCode, CapsuleConfig, build_model,
                          get_config)
from lab.capsules import regularizers as reg
from lab.capsules.poses import compose_igeo, default_nice, intensity_raw_for

F64 = np.float64


def tiny_config(model="mixture", **kw):
    base = dict(name="tiny", model=model, image_size=8, n_components=3, n_acs=2,
                template_size=3, n_distortions=2, encoder_hidden=5, decoder_hidden=4,
                batch_size=6, n_valid=6, eval_every=0, optimizer="adam",
                optimizer_kwargs={"lr": 3e-3}, manager_noise=10.0)
    if model == "ac":
        base.update(n_components=1, n_distortions=0)
    if model == "single_cc":
        base.update(n_components=1, manager_noise=0.0)
    base.update(kw)
    return CapsuleConfig(**base)


# -- GPNN (fig 2.2) ------------------------------------------------------------------------
def test_gpnn_gradcheck_train_and_test():
    rng = np.random.default_rng(0)
    net = GPNN(4, 5, 3, dropout=0.5, rng=rng, dtype=F64)
    names = list(net.params)
    x = rng.standard_normal((3, 4))

    def fn_train(x, *ps):
        for n, p in zip(names, ps):
            net.params[n] = p
        return net.forward(x, train=True, stream=RandomStream(5))  # same masks every call

    def fn_test(x, *ps):
        for n, p in zip(names, ps):
            net.params[n] = p
        return net.forward(x, train=False)
    arrays = [x] + [net.params[n].data.copy() for n in names]
    assert gradcheck(fn_train, arrays)
    assert gradcheck(fn_test, arrays)


def test_gpnn_structure_and_dropout_masks():
    rng = np.random.default_rng(1)
    net = GPNN(6, 40, 2, dropout=0.5, rng=rng, dtype=F64)
    x = Tensor(rng.standard_normal((50, 6)))
    out, (h1, h2, h3) = net.forward(x, train=True, stream=RandomStream(3), return_hidden=True)
    for h in (h1, h2, h3):
        zero = (h.data == 0).mean()
        assert 0.35 < zero < 0.65          # ~50% of hidden units dropped, not rescaled
    kept = h1.data[h1.data != 0]
    assert ((kept > 0) & (kept < 1)).all()  # logistic values, no 1/(1-p) rescaling
    assert (h3.data >= 0).all()             # squaring units
    # Skip connections: the output depends on h1 directly (zero W2 and W3 paths).
    for k in ("W2", "W3", "Wo2", "Wo3"):
        net.params[f"gpnn.{k}"].data[...] = 0
    out2, (g1, _, _) = net.forward(x, train=False, return_hidden=True)
    np.testing.assert_allclose(out2.data, g1.data @ net.params["gpnn.Wo1"].data
                               + net.params["gpnn.bo"].data, atol=1e-12)


def test_gpnn_test_time_weights_are_halved():
    rng = np.random.default_rng(2)
    net = GPNN(7, 6, 3, dropout=0.5, rng=rng, dtype=F64)
    w = net.test_time_weights()
    for k in ("W2", "W3", "Wo1", "Wo2", "Wo3"):
        np.testing.assert_allclose(w[k], 0.5 * net.params[f"gpnn.{k}"].data)
    for k in ("W1", "b1", "b2", "b3", "bo"):
        np.testing.assert_allclose(w[k], net.params[f"gpnn.{k}"].data)
    x = rng.standard_normal((4, 7))
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    h1 = sig(x @ w["W1"] + w["b1"])
    h2 = sig(h1 @ w["W2"] + w["b2"])
    h3 = (h2 @ w["W3"] + w["b3"]) ** 2
    ref = h1 @ w["Wo1"] + h2 @ w["Wo2"] + h3 @ w["Wo3"] + w["bo"]
    np.testing.assert_allclose(net.forward(Tensor(x), train=False).data, ref, rtol=1e-10)
    # dropout=0 (the CC's distortion function) is never scaled
    plain = GPNN(7, 6, 3, dropout=0.0, rng=np.random.default_rng(2), dtype=F64)
    assert all(np.array_equal(plain.test_time_weights()[k], plain.params[f"gpnn.{k}"].data)
               for k in ("W2", "Wo1"))


# -- managers (figs 2.9, 2.10) --------------------------------------------------------------
def test_tmm_and_rmm():
    x = np.array([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    y = TMM()(Tensor(x)).data
    np.testing.assert_allclose(y.sum(1), 1.0)
    np.testing.assert_allclose(y, np.exp(x) / np.exp(x).sum(1, keepdims=True))
    rmm = RMM(10.0)
    np.testing.assert_allclose(rmm(Tensor(x), train=False).data, y)  # no noise at test time
    s = RandomStream(4)
    noisy = rmm(Tensor(np.zeros((2000, 2))), train=True, stream=s).data
    # y_0 = sigmoid(ξ0 - ξ1) with ξ ~ U(0, 10): far from 0.5 most of the time
    assert (np.abs(noisy[:, 0] - 0.5) > 0.4).mean() > 0.6
    expected_xi = RandomStream(4).uniform((2, 3), 0.0, 10.0, dtype=np.float64)
    got = rmm(Tensor(x), train=True, stream=RandomStream(4)).data
    np.testing.assert_allclose(got, TMM()(Tensor(x + expected_xi)).data, rtol=1e-5)
    assert gradcheck(lambda t: rmm(t, train=True, stream=RandomStream(9)), [x])


# -- regularizers (2.4) ------------------------------------------------------------------------
def test_weight_decay_value():
    a = Tensor(np.array([0.05, 0.3, -0.5]), requires_grad=True)
    b = Tensor(np.array([[0.1, -0.15]]), requires_grad=True)
    v = reg.weight_decay([a, b])
    assert v.item() == pytest.approx(1e-6 * (0.2 ** 2 + 0.4 ** 2 + 0.05 ** 2))
    v.backward()
    np.testing.assert_allclose(a.grad, 1e-6 * np.array([0.0, 2 * 0.2, -2 * 0.4]))


def test_weight_decay_gradcheck_and_brute_force(rng):
    """WeightDecay (one node over all parameters) against float64 central differences and
    against the element-wise formula, values away from the kinks at ±0.1."""
    shapes = [(4, 5), (7,), (2, 3, 2)]
    arrays = []
    for shape in shapes:
        x = rng.uniform(-0.6, 0.6, shape)
        x[np.abs(np.abs(x) - 0.1) < 0.02] = 0.3
        arrays.append(x)
    assert gradcheck(lambda *ts: reg.weight_decay(ts, alpha=0.7), arrays)
    want = 0.7 * sum((np.maximum(np.abs(x) - 0.1, 0.0) ** 2).sum() for x in arrays)
    assert reg.weight_decay([Tensor(x) for x in arrays], alpha=0.7).item() == pytest.approx(want, rel=1e-12)
    f32 = reg.weight_decay([Tensor(x.astype(np.float32)) for x in arrays], alpha=0.7)
    assert f32.dtype == np.float32 and f32.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        reg.weight_decay([])


def test_determinant_penalty_value():
    m = np.zeros((2, 2, 3, 3))
    for b in range(2):
        for k in range(2):
            m[b, k] = np.eye(3)
    m[0, 0, 0, 0], m[0, 0, 1, 1] = 0.5, 0.8     # det 0.4 -> short by 0.6
    m[1, 1, 0, 0], m[1, 1, 1, 1] = 3.0, 2.0     # det 6: no penalty
    m[0, 1, 0, 1] = 0.3                          # shear keeps det 1: no penalty
    v = reg.determinant_penalty(Tensor(m), s=1.0, alpha=2.0)
    assert v.item() == pytest.approx(2.0 * 0.6 ** 2 / 2)  # mean over the 2 cases
    assert reg.full_size_determinant(11, (28, 28)) == 1.0
    # the NTM convention: a template at native size on a 28x28 canvas has det (28/11)^2
    from lab.graphics import nice_to_matrix
    mat = nice_to_matrix(Tensor(default_nice(11, (28, 28), (0.1, -0.2))[None]))
    assert reg.determinant(mat).item() == pytest.approx((28 / 11) ** 2)


def test_mixture_usage_and_code_decay():
    y = np.array([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2]])
    v = reg.mixture_usage(Tensor(y), alpha=0.1)
    assert v.item() == pytest.approx(-0.1 * (np.log(0.7) + np.log(0.2) + np.log(0.1)))
    assert gradcheck(lambda t: reg.mixture_usage(t, 0.1), [y])
    c = np.array([[1.0, -2.0], [0.0, 3.0]])
    assert reg.code_decay([Tensor(c)], 0.01).item() == pytest.approx(0.01 * 14 / 2)


def test_softplus10_nonnegativity_and_inverse():
    from lab.autodiff import softplus10
    for v in (0.05, 1.0, 2.5):
        assert softplus10(Tensor(np.array(intensity_raw_for(v)))).item() == pytest.approx(v)
    cfg = tiny_config()
    model = build_model(cfg, seed=0)
    model.acs.params["acs.templates"].data[...] = -5.0
    assert (model.templates() >= 0).all()


# -- rendering pieces (figs 2.3, 2.7, 2.8) -------------------------------------------------------
def test_acr_multichannel_gradcheck():
    rng = np.random.default_rng(3)
    acr = ACR(2, 3, (6, 6), n_channels=2, rng=rng, dtype=F64)
    nice = np.array([[[0.05, -0.1, 2.0, 1.7, 0.1, 0.2], [-0.1, 0.1, 1.8, 2.2, -0.1, -0.3]]] * 2)
    from lab.graphics import nice_to_matrix
    mats = nice_to_matrix(Tensor(nice)).data
    inten = rng.uniform(0.5, 1.5, (2, 2, 2))

    def fn(t, m, i):
        acr.params["acs.templates"] = t
        return acr.render(m, i)
    assert gradcheck(fn, [acr.raw_templates.data.copy(), mats, inten], atol=1e-6, rtol=1e-4)
    # two channels = the sum of the channels rendered one by one
    out = fn(Tensor(acr.raw_templates.data), Tensor(mats), Tensor(inten)).data
    one = ACR(2, 3, (6, 6), n_channels=1, dtype=F64)
    parts = []
    for ch in range(2):
        one.params["acs.templates"] = Tensor(acr.raw_templates.data[:, ch:ch + 1].copy())
        parts.append(one.render(Tensor(mats), Tensor(inten[..., ch:ch + 1])).data)
    np.testing.assert_allclose(out, parts[0] + parts[1], atol=1e-12)


def test_migp_composition_places_ac_in_cc():
    from lab.graphics import nice_to_matrix
    cc = np.array([[1.0, 0.1, -0.2, 1.0, 1.0, 0.0, 0.0]])     # intensity 1, CC shifted
    ac = np.array([[[0.5, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0]]])     # AC at the CC centre, half size
    m, i = compose_igeo(Tensor(cc), Tensor(ac), 1)
    ref = nice_to_matrix(Tensor(ac[0, 0, 1:])).data @ nice_to_matrix(Tensor(cc[0, 1:])).data
    np.testing.assert_allclose(m.data[0, 0], ref, atol=1e-12)
    np.testing.assert_allclose(i.data[0, 0], [0.5])
    # The AC's centre is drawn at the CC's centre: world (0.5 - t0, 0.5 - t1)
    centre = np.array([0.5 - 0.1, 0.5 + 0.2, 1.0])
    np.testing.assert_allclose(m.data[0, 0] @ centre, [0.5, 0.5, 1.0], atol=1e-12)


def test_ccr_gradcheck():
    rng = np.random.default_rng(4)
    ccr = CCR(n_distortions=2, n_acs=2, template_size=3, output_size=(6, 6), n_hidden=4,
              n_components=3, rng=rng, dtype=F64)
    names = list(ccr.pose_fn.params) + ["acs.templates"]
    dist = rng.standard_normal((2, 2)) * 0.3
    y = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7]])
    cc = np.array([[1.1, 0.05, -0.05, 1.1, 0.9, 0.1, 0.1], [0.8, -0.1, 0.0, 0.9, 1.0, 0.0, -0.2]])

    def fn(d, yy, c, *ps):
        for n, p in zip(names, ps):
            (ccr.acs.params if n.startswith("acs") else ccr.pose_fn.params)[n] = p
        return ccr.render(c, ccr.ac_poses(d, yy))["output"]
    arrays = [dist, y, cc] + [(ccr.acs.params if n.startswith("acs") else ccr.pose_fn.params)[n].data.copy()
                              for n in names]
    assert gradcheck(fn, arrays, atol=1e-6, rtol=1e-4)


def test_ccr_y_weight_scale_scales_only_the_weights_from_y():
    """``decoder_y_init``: the first layer's rows from the {y_i} inputs grow, the rest of the
    initialisation (same seed) is unchanged, so each CC starts with its own constellation."""
    def build(scale):
        return CCR(n_distortions=2, n_acs=2, template_size=3, output_size=(6, 6), n_hidden=5,
                   n_components=3, y_weight_scale=scale, rng=np.random.default_rng(7), dtype=F64)
    one, four = build(1.0), build(4.0)
    w1, w4 = one.pose_fn.p("W1").data, four.pose_fn.p("W1").data
    np.testing.assert_array_equal(w4[:2], w1[:2])
    np.testing.assert_array_equal(w4[2:], 4.0 * w1[2:])
    for name in one.params:
        if name != "ccr.W1":
            np.testing.assert_array_equal(one.params[name].data, four.params[name].data)
    eye = np.eye(3)
    spread = [np.ptp(m.ac_poses(Tensor(np.zeros((3, 2))), Tensor(eye)).data, axis=0).mean()
              for m in (one, four)]
    assert spread[1] > 1.5 * spread[0]        # the CCs' constellations differ more


# -- whole models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mixture", "single_cc", "ac"])
def test_whole_tiny_model_gradcheck(kind):
    cfg = tiny_config(kind, weight_decay=1e-3, code_decay=1e-3, determinant_alpha=1.0,
                      usage_alpha=0.05)
    model = build_model(cfg, seed=1, dtype=F64)
    names = list(model.params)
    images = np.random.default_rng(5).random((4, 8, 8))

    def fn(x, *ps):
        model.bind_params(dict(zip(names, ps)))
        loss, _, _ = model.loss(x, train=True, stream=RandomStream(11))  # fixed dropout/noise
        return loss
    arrays = [images] + [model.params[n].data.copy() for n in names]
    assert gradcheck(fn, arrays, atol=1e-6, rtol=1e-4, n_directions=2)


def test_multichannel_model_runs():
    cfg = tiny_config("single_cc", n_channels=3)
    model = build_model(cfg, seed=0)
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    code = model.encode(x)
    assert code.ac_poses.shape == (3, 2, 3 + 6)
    assert code.ac_intensities.shape == (3, 2, 3)
    assert model.templates().shape == (2, 3, 3, 3)
    np.testing.assert_allclose(model.decode(code), model.reconstruct(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["mixture", "single_cc", "ac"])
def test_encode_decode_shapes(kind):
    cfg = tiny_config(kind)
    model = build_model(cfg, seed=0)
    x = (np.random.default_rng(1).random((7, 8, 8)) * 255).astype(np.uint8)
    code = model.encode(x, batch_size=3)
    C = cfg.n_components
    assert isinstance(code, CapsuleCode)
    assert code.mixture.shape == (7, C)
    np.testing.assert_allclose(code.mixture.sum(1), 1.0, rtol=1e-5)
    if kind == "ac":
        assert code.poses.shape == (7, 2, 7)
    else:
        assert code.poses.shape == (7, C, 7) and code.distortions.shape == (7, C, 2)
        assert (code.poses[..., 0] >= 0).all()           # softplus10 intensities
    assert code.ac_matrices.shape == (7, 2, 3, 3)
    rec = model.reconstruct(x)
    assert rec.shape == (7, 8, 8)
    np.testing.assert_allclose(model.decode(code), rec, atol=1e-6)
    imgs, details = model.decode(code[2], return_details=True)
    assert imgs.shape == (1, 8, 8) and details["contributions"].shape == (1, 2, 8, 8)
    # with dropout: random but reproducible by seed
    a, b = model.reconstruct(x, dropout=True, seed=3), model.reconstruct(x, dropout=True, seed=3)
    np.testing.assert_array_equal(a, b)
    if kind == "mixture":
        per = model.decode(code, component=1)
        assert per.shape == (7, 8, 8)
        # a case fully assigned to component 1 decodes the same either way
        c2 = code.copy()
        c2.mixture[:] = 0
        c2.mixture[:, 1] = 1
        np.testing.assert_allclose(model.decode(c2), per, atol=1e-6)


def test_distortions_not_halved_at_test_time():
    cfg = tiny_config("single_cc", dropout=0.5, distortion_dropout=0.5)
    model = build_model(cfg, seed=0)
    x = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    code = model.encode(x)
    # decode uses the distortions as given: the test-time network does not scale them
    t = model._code_tensors(code)
    from lab.autodiff import no_grad
    with no_grad():
        ac = model.ccr.ac_poses(Tensor(code.distortions[:, 0]), None).data
    np.testing.assert_allclose(ac, code.ac_poses, atol=1e-6)
    assert t["distortions"].shape == (3, 1, 2)


def test_decode_single_image_is_fast_at_thesis_size():
    model = build_model(get_config("mnist-thesis"), seed=0)
    x = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    code = model.encode(x)
    model.decode(code)
    t = time.perf_counter()
    for _ in range(5):
        out = model.decode(code)
    per = (time.perf_counter() - t) / 5
    assert out.shape == (1, 28, 28)
    assert per < 0.1, f"decode of one image took {per * 1000:.1f} ms"


# -- explicit depth (2.7.2) ---------------------------------------------------------------------
def test_explicit_depth_output_model():
    from lab.capsules.depth import explicit_depth
    a = np.array([[[[0.2]], [[0.9]]]])                 # two ACs, one pixel
    near, far = np.array([[[[3.0]], [[0.5]]]]), np.array([[[[0.0]], [[0.0]]]])
    out = explicit_depth(Tensor(a), Tensor(near)).item()
    assert abs(out - 0.2) < 0.01                       # the front AC wins, even though darker
    assert explicit_depth(Tensor(a), Tensor(far)).item() == 0.0   # nothing drawn: exactly 0
    big = explicit_depth(Tensor(a), Tensor(near * 100)).item()    # no overflow
    assert np.isfinite(big) and abs(big - 0.2) < 1e-6
    rng = np.random.default_rng(0)
    assert gradcheck(lambda v, d: explicit_depth(v, d),
                     [rng.random((2, 3, 4, 4)), rng.random((2, 3, 4, 4))])


def test_explicit_depth_model_gradcheck():
    cfg = tiny_config("single_cc", output_kind="explicit_depth")
    model = build_model(cfg, seed=2, dtype=F64)
    assert model.templates().shape == (2, 2, 3, 3)     # value + depth template
    names = list(model.params)
    images = np.random.default_rng(6).random((3, 8, 8))

    def fn(x, *ps):
        model.bind_params(dict(zip(names, ps)))
        return model.loss(x, train=True, stream=RandomStream(1))[0]
    assert gradcheck(fn, [images] + [model.params[n].data.copy() for n in names],
                     atol=1e-6, rtol=1e-4, n_directions=2)
    out = model.contributions(images.astype(np.float32))
    assert out["contributions"].shape == (3, 2, 8, 8)
