"""Ops with their own GPU code against the numpy path on the same inputs (marked ``gpu``:
skipped without a device): NTM's kernels (``lab/gpu/kernels/ntm.cu``) and the
one-node weight decay of 2.4.5."""
import numpy as np
import pytest

import lab.autodiff as ad
from lab.capsules import regularizers as reg
from lab.graphics.ntm import igeo_nice_to_igeo, nice_to_matrix

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ntm_kernels_match_numpy(dtype, rng):
    cp = pytest.importorskip("cupy")
    nice7 = (rng.standard_normal((50, 9, 7)) * 1.5).astype(dtype)   # INTM hands NTM a strided view
    gy = rng.standard_normal((50, 9, 3, 3)).astype(dtype)
    out = []
    for xp in (np, cp):
        x = ad.Tensor(xp.asarray(nice7), requires_grad=True)
        m, _ = igeo_nice_to_igeo(x)
        m.backward(xp.asarray(gy))
        out.append((cp.asnumpy(m.data), cp.asnumpy(x.grad)))
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=tol, atol=tol)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=10 * tol, atol=10 * tol)


def test_ntm_gpu_gradcheck(rng):
    cp = pytest.importorskip("cupy")
    nice = rng.standard_normal((6, 6)) * 0.5
    nice[:, 2:4] += 1.0
    assert ad.gradcheck(lambda t: nice_to_matrix(t), [cp.asarray(nice)])


def test_weight_decay_gpu_equals_cpu(rng):
    cp = pytest.importorskip("cupy")
    arrays = [rng.uniform(-0.6, 0.6, s).astype(np.float32) for s in ((30, 20), (7,), (4, 5, 6))]
    res = []
    for xp in (np, cp):
        ts = [ad.Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
        v = reg.weight_decay(ts, alpha=0.3)
        v.backward()
        res.append((float(v.item()), [cp.asnumpy(t.grad) for t in ts]))
    assert res[1][0] == pytest.approx(res[0][0], rel=1e-5)
    for a, b in zip(res[1][1], res[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
