"""Figure data of thesis chapter 2 (figs 2.13-2.19) on a tiny untrained model."""
import json

import numpy as np
import pytest

from lab.capsules import CapsuleConfig, build_model
from lab.capsules import analysis as an
from lab.capsules.evaluate import code_features
from lab.capsules.mfa import MFA


@pytest.fixture(scope="module")
def model():
    cfg = CapsuleConfig(name="tiny", image_size=8, n_components=3, n_acs=2, template_size=3,
                        n_distortions=2, encoder_hidden=6, decoder_hidden=5)
    return build_model(cfg, seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((12, 8, 8)).astype(np.float32)


def test_reconstructions_with_contributions(model, images):
    r = an.reconstructions_with_contributions(model, images)
    assert r["contributions"].shape == (12, 2, 8, 8)
    np.testing.assert_allclose(r["mismatch"], r["original"] - r["reconstruction"])
    assert r["error_per_pixel"] == pytest.approx(float((r["mismatch"] ** 2).mean()))


def test_active_acs_counts_the_acs_used_on_enough_images():
    i = np.zeros((100, 4, 2), np.float32)
    i[:, 0, 0] = 0.5            # always on
    i[:4, 1, 1] = 0.2           # on for 4% of the images (second channel): not enough
    i[:5, 2, 1] = 0.2           # on for 5%: counts
    i[:, 3, :] = 0.05           # never above the threshold
    assert an.active_acs(i) == 2
    assert an.active_acs(i, min_fraction=0.04) == 3
    assert an.active_acs(i, threshold=0.01) == 3


def test_template_images_interpolate(model):
    t = an.template_images(model, upsample=3)
    assert t.shape == (2, 1, 9, 9)
    raw = model.templates()
    # upsampled pixel 3r+1 sits exactly on template point r; between points: bilinear
    np.testing.assert_allclose(t[:, 0, 1::3, 1::3], raw[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t[:, 0, 2, 1], (2 * raw[:, 0, 0, 0] + raw[:, 0, 1, 0]) / 3,
                               rtol=1e-5)


def test_centres_of_gravity(model, images):
    c = an.centres_of_gravity(model, images)
    assert c.shape == (12, 2, 2)
    ok = np.isfinite(c)
    assert ok.any() and ((c[ok] >= 0) & (c[ok] <= 7)).all()


def test_mfa_fits_and_improves():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (100, 5)), rng.normal(5, 1, (100, 5))])
    m = MFA(2, 2, n_iter=50).fit(X)
    assert m.loglik_[-1] > m.loglik_[0]
    assert np.all(np.diff(m.loglik_) > -1e-6)        # EM never decreases the likelihood
    assert sorted(np.round(m.means_.mean(1)).tolist()) == [0.0, 5.0]


def test_mfa_pixels_vs_poses(model, images):
    r = an.mfa_pixels_vs_poses(model, images, n_components=2, n_factors=1, n_iter=3)
    assert r["pixel_means"].shape == (2, 8, 8)
    assert r["pose_means_rendered"].shape == (2, 8, 8)


def test_distortion_sweep(model, images):
    r = an.distortion_sweep(model, images, n_steps=5)
    assert r["images"].shape == (2, 5, 8, 8)
    np.testing.assert_allclose(r["values"][:, 2], 0.0)     # the middle column is zero distortion
    np.testing.assert_allclose(r["images"][0, 2], r["images"][1, 2], atol=1e-6)


def test_component_reconstructions(model, images):
    r = an.component_reconstructions(model, images[:4])
    assert r["per_component"].shape == (4, 3, 8, 8) and r["selected"].shape == (4,)


def test_rule_dominance_from_metrics_file(tmp_path):
    lines = [{"step": 1, "rule_rule3": 0.1, "rule_rule4": 0.9},
             {"event": "checkpoint", "step": 1},
             {"step": 2, "rule_rule3": 0.3, "rule_rule4": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    r = an.rule_dominance(tmp_path)
    np.testing.assert_array_equal(r["step"], [1, 2])
    np.testing.assert_allclose(r["rule3"], [0.1, 0.3])


def test_code_features(model, images):
    f = code_features(model.encode(images))
    assert f.shape[0] == 12 and np.isfinite(f).all()


def test_load_metrics_keeps_the_records_a_resumed_run_went_on_from(tmp_path):
    from lab.capsules.analysis import load_metrics
    lines = [{"step": s, "loss": 10.0 - s} for s in (1, 2, 3, 4)]
    lines += [{"event": "checkpoint", "step": 2}]
    lines += [{"step": s, "loss": 20.0 - s} for s in (3, 4, 5)]     # resumed from step 2
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    got = load_metrics(tmp_path)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in got] == [9.0, 8.0, 17.0, 16.0, 15.0]


def test_code_search_finds_better_codes_than_the_encoder(model, images):
    """2.2's encoder, measured: Adam on each image's code (decoder fixed) from the
    encoder's code. Step 0 is the encoder's error; images are independent, so the batch
    size cannot matter; the weights are never touched; {y_i} stay the encoder's."""
    before = {k: p.data.copy() for k, p in model.params.items()}
    r = an.code_search(model, images, steps=40, lr=0.05, every=20)
    assert r["steps"].tolist() == [0, 20, 40] and r["raw"].shape == (12, model.code_offset.size)
    direct = float(((model.reconstruct(images) - images) ** 2).mean())
    assert r["error"][0] == pytest.approx(direct, rel=1e-5)
    assert r["error"][2] < r["error"][1] < 0.9 * r["error"][0]
    assert r["reconstruction"].shape == images.shape
    assert float(((r["reconstruction"] - images) ** 2).mean()) == pytest.approx(r["error"][2], rel=1e-5)
    in_fives = an.code_search(model, images, steps=40, lr=0.05, every=20, batch_size=5)
    np.testing.assert_allclose(in_fives["error"], r["error"], rtol=1e-4)
    np.testing.assert_allclose(in_fives["raw"], r["raw"], rtol=1e-3, atol=1e-5)
    C = model.config.n_components
    encoder_raw = model.forward(images)["raw"].data
    np.testing.assert_array_equal(r["raw"][:, :C], encoder_raw[:, :C])   # logits not moved
    free = an.code_search(model, images, steps=5, lr=0.05, keep_mixture=False)
    assert not np.allclose(free["raw"][:, :C], encoder_raw[:, :C])
    for k, p in model.params.items():
        assert p.requires_grad and np.array_equal(p.data, before[k]), k
    with pytest.raises(ValueError, match="steps must be >= 0"):
        an.code_search(model, images, steps=-1)


def test_decode_raw_gradient_float64(images):
    """The code gradient that code_search descends, against central differences."""
    from lab.autodiff import Tensor, gradcheck
    from lab.autodiff import sum as tsum
    cfg = CapsuleConfig(name="tiny", image_size=8, n_components=3, n_acs=2, template_size=3,
                        n_distortions=2, encoder_hidden=6, decoder_hidden=5)
    m = build_model(cfg, seed=1, dtype=np.float64)
    x = images[:4].reshape(4, -1).astype(np.float64)
    out = m.forward(x)
    raw, y = out["raw"].data, Tensor(out["mixture"].data)

    def loss(r):
        diff = m.decode_raw(r, mixture=y)["output"].reshape((4, 64)) - Tensor(x)
        return tsum(diff * diff)
    assert gradcheck(loss, [raw])
