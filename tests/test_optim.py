"""The optimizers of lab.optim: thesis 2.5.3's four rules, the g^2 averages, Adam, state I/O."""
import math

import numpy as np
import pytest

from lab.autodiff import Tensor
from lab.optim import (DEFAULT_GAMMAS, SGD, Adam, ConservativeOptimizer, conservative_step,
                       make_optimizer)


def param(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# -- the four rules -------------------------------------------------------------------
def test_each_rule_wins_on_hand_made_gradients():
    alphas = (0.5, 1.0, 0.1, 1.0)
    # columns: g, ghat2, expected winner (0-based rule, 4 = zero gradient), expected delta
    cases = [
        (10.0, 1.0, 0, 0.5),       # proposals 0.5, 10, 1, 10      -> rule 1
        (0.01, 1e-6, 1, 0.01),     # 0.5, 0.01, 1, 1e4             -> rule 2
        (-1.0, 1.0, 2, -0.1),      # 0.5, 1, 0.1, 1                -> rule 3
        (2.0, 400.0, 3, 0.005),    # 0.5, 2, 0.01, 0.005           -> rule 4
        (0.0, 0.0, 4, 0.0),        # nothing to do
    ]
    g = np.array([c[0] for c in cases])
    v = np.array([c[1] for c in cases])
    delta, winner = conservative_step(g, v, alphas)
    np.testing.assert_array_equal(winner, [c[2] for c in cases])
    np.testing.assert_allclose(delta, [c[3] for c in cases], rtol=1e-12)
    assert np.all(np.sign(delta) == np.sign(g))


def test_optimizer_records_the_winning_rule_and_descends():
    # gamma = 1 only: ghat2 is exactly this step's g^2, so rule 3 proposes alpha3*sign(g)
    # and rule 4 proposes alpha4/|g|: the winner is predictable from g alone.
    alphas = (0.5, 1.0, 0.1, 1.0)
    w = param(np.zeros(5))
    opt = ConservativeOptimizer({"w": w}, alphas=alphas, gammas=(1.0,))
    w.grad = np.array([0.05, 0.5, 0.0, 20.0, -0.08])
    # rule2: 0.05 < 0.1 ; rule3: 0.1 < 0.5,2 ; zero ; rule4: 1/20 = 0.05 ; rule2: 0.08
    opt.step()
    np.testing.assert_allclose(w.data, -np.array([0.05, 0.1, 0.0, 0.05, -0.08]))
    f = opt.last_rule_fractions
    assert f == pytest.approx({"rule1": 0.0, "rule2": 0.4, "rule3": 0.2, "rule4": 0.2,
                               "zero_grad": 0.2})
    assert sum(f.values()) == pytest.approx(1.0)


def test_rule_fractions_per_group_and_param():
    a, b, c = param(np.zeros(3)), param(np.zeros(1)), param(np.zeros(2))
    opt = ConservativeOptimizer({"enc/a": a, "enc/b": b, "dec/c": c}, alphas=(0.5, 1.0, 0.1, 1.0),
                                gammas=(1.0,))
    a.grad = np.array([0.5, 0.5, 0.5])   # rule 3
    b.grad = np.array([20.0])            # rule 4
    c.grad = np.array([0.01, 0.0])       # rule 2, zero
    opt.step()
    groups = opt.rule_fractions(by="group")
    assert groups["enc"]["rule3"] == pytest.approx(0.75) and groups["enc"]["rule4"] == pytest.approx(0.25)
    assert groups["dec"]["rule2"] == pytest.approx(0.5) and groups["dec"]["zero_grad"] == pytest.approx(0.5)
    assert opt.rule_fractions(by="param")["enc/b"]["rule4"] == 1.0
    assert set(opt.rule_fractions(by=lambda n: "all")) == {"all"}


def test_averages_follow_the_thesis_recursion_and_ghat2_is_their_max():
    gs = [np.array([1.0, -2.0]), np.array([3.0, 0.5]), np.array([-0.5, 0.1])]
    w = param(np.zeros(2))
    opt = ConservativeOptimizer([w], init_sq=7.0)
    assert opt.gammas == pytest.approx((1.0, math.exp(3), math.exp(6)))
    expected = [np.full(2, 7.0) for _ in DEFAULT_GAMMAS]
    for g in gs:
        before = w.data.copy()
        w.grad = g
        opt.step()
        # updated with this g *before* the step is computed
        expected = [g * g / gam + (1 - 1 / gam) * e for gam, e in zip(DEFAULT_GAMMAS, expected)]
        for k, e in enumerate(expected):
            np.testing.assert_allclose(opt.state["0"][f"avg{k}"], e, rtol=1e-12)
        np.testing.assert_allclose(expected[0], g * g)  # gamma = 1: the current g^2
        ghat2 = np.maximum.reduce(expected)
        delta, _ = conservative_step(g, ghat2, opt.alphas)
        np.testing.assert_allclose(before - w.data, delta, rtol=1e-12)


def test_relative_high_start_makes_rule4_dominate_first_then_rule3():
    # Fig 2.13 in miniature: a stationary gradient distribution; early steps are decided
    # by rule 4 (high initial ghat2), later ones by rule 3 once the start is forgotten.
    rng = np.random.default_rng(0)
    w = param(np.zeros(2000), dtype=np.float32)
    opt = ConservativeOptimizer({"w": w}, alphas=(0.1, 1.0, 1e-3, 1e-3), init_factor=100.0)
    history = []
    for _ in range(3000):
        w.grad = (rng.standard_normal(2000) * 0.3).astype(np.float32)
        opt.step()
        history.append(opt.last_rule_fractions)
    assert history[0]["rule4"] > 0.95
    assert history[-1]["rule3"] > 0.6 and history[-1]["rule3"] > history[0]["rule3"] + 0.5
    assert w.data.dtype == np.float32


def test_zero_first_gradient_waits_for_the_high_start():
    w = param(np.zeros(3))
    opt = ConservativeOptimizer({"w": w})
    w.grad = np.zeros(3)
    opt.step()
    assert opt.state["w"]["ready"] == 0 and np.all(w.data == 0)
    w.grad = np.array([1.0, 0.0, 1.0])
    opt.step()
    assert opt.state["w"]["ready"] == 1
    # start = init_factor * max(g^2, mean g^2): the zero element starts high as well
    np.testing.assert_allclose(opt.state["w"]["avg2"][1], 2 / 3 * (1 - math.exp(-6)))


def test_overrides_and_step_scale():
    a, b = param([0.0]), param([0.0])
    opt = ConservativeOptimizer({"enc/a": a, "dec/b": b}, alphas=(0.5, 1.0, 0.1, 1.0),
                                gammas=(1.0,), overrides={"dec/*": {"alphas": (0.5, 1.0, 0.01, 1.0)}})
    a.grad, b.grad = np.array([0.5]), np.array([0.5])
    opt.step()
    assert a.data[0] == pytest.approx(-0.1) and b.data[0] == pytest.approx(-0.01)
    opt.scale_step_sizes(0.5)
    opt.step()
    assert a.data[0] == pytest.approx(-0.15) and b.data[0] == pytest.approx(-0.015)
    with pytest.raises(ValueError):
        ConservativeOptimizer([a], overrides={"*": {"lr": 1.0}})
    with pytest.raises(ValueError):
        opt.scale_step_sizes(0.0)


def test_parameters_without_gradient_are_left_alone():
    a, b = param([1.0]), param([2.0])
    for opt in (ConservativeOptimizer([a, b]), Adam([a, b]), SGD([a, b])):
        a.grad, b.grad = np.array([1.0]), None
        opt.step()
        assert b.data[0] == 2.0 and a.data[0] < 1.0
        opt.zero_grad()
        assert a.grad is None


# -- Adam and SGD ---------------------------------------------------------------------
def test_adam_matches_a_hand_computation_for_two_steps():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    w = param([1.0, -1.0])
    opt = Adam([w], lr=lr, betas=(b1, b2), eps=eps)
    g1, g2 = np.array([0.2, -3.0]), np.array([-0.1, 1.0])
    # by hand: m1 = 0.1 g1, v1 = 0.001 g1^2 -> mhat = g1, vhat = g1^2 -> step lr*sign(g1)
    w.grad = g1
    opt.step()
    np.testing.assert_allclose(w.data, [1.0 - lr * 0.2 / (0.2 + eps), -1.0 + lr * 3 / (3 + eps)])
    w.grad = g2
    opt.step()
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    mhat, vhat = m / (1 - 0.81), v / (1 - 0.999 ** 2)
    expected = np.array([1.0, -1.0]) - lr * np.sign(g1) * np.abs(g1) / (np.abs(g1) + eps) \
        - lr * mhat / (np.sqrt(vhat) + eps)
    np.testing.assert_allclose(w.data, expected, rtol=1e-12)
    assert opt.last_rule_fractions == {}


def test_sgd_momentum():
    w = param([0.0])
    opt = SGD([w], lr=0.1, momentum=0.5)
    for _ in range(2):
        w.grad = np.array([1.0])
        opt.step()
    assert w.data[0] == pytest.approx(-(0.1 * 1 + 0.1 * 1.5))


# -- checkpoints of the optimizer state -----------------------------------------------
def _quadratic_run(opt_factory, steps, resume_at=None):
    """Minimise 0.5 |A w - b|^2 from a fixed start; optionally rebuild at ``resume_at``."""
    rng = np.random.default_rng(3)
    A, b = rng.standard_normal((6, 4)), rng.standard_normal(6)
    w = param(rng.standard_normal(4))
    opt = opt_factory({"w": w})
    for t in range(steps):
        if t == resume_at:
            sd = opt.state_dict()
            w = param(w.data.copy())
            opt = opt_factory({"w": w})
            opt.load_state_dict(sd)
        w.grad = A.T @ (A @ w.data - b)
        opt.step()
    return w.data


@pytest.mark.parametrize("factory", [
    lambda p: ConservativeOptimizer(p, alphas=(0.1, 1.0, 0.01, 0.05)),
    lambda p: Adam(p, lr=0.01),
    lambda p: SGD(p, lr=0.01, momentum=0.9),
])
def test_state_dict_round_trip_continues_identically(factory):
    straight = _quadratic_run(factory, 40)
    resumed = _quadratic_run(factory, 40, resume_at=17)
    np.testing.assert_array_equal(straight, resumed)


def test_state_dict_is_numpy_and_json_scalars():
    import json
    w = param(np.zeros(3), dtype=np.float32)
    opt = ConservativeOptimizer({"w": w})
    w.grad = np.ones(3, np.float32)
    opt.step()
    opt.scale_step_sizes(0.5)
    sd = opt.state_dict()
    arrays = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in sd.items() if not isinstance(v, np.ndarray)}
    assert set(arrays) == {"state/w/avg0", "state/w/avg1", "state/w/avg2"}
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert json.loads(json.dumps(scalars))["step_scale"] == 0.5
    other = ConservativeOptimizer({"w": w})
    other.load_state_dict(json.loads(json.dumps(scalars)) | arrays)
    assert other.step_scale == 0.5 and other.step_count == 1
    with pytest.raises(ValueError):
        Adam({"w": w}).load_state_dict(sd)


def test_make_optimizer():
    w = param([0.0])
    assert isinstance(make_optimizer("Adam", [w], lr=0.1), Adam)
    assert make_optimizer("conservative", [w]).get_params()["init_factor"] == 1.0
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", [w])


def test_fast_rule_counts_match_the_per_element_winners():
    from lab.optim.conservative import _factor, _rule_counts
    rng = np.random.default_rng(5)
    alphas = (0.3, 0.5, 0.01, 0.2)
    g = rng.standard_normal(4000) * rng.choice([1e-3, 1.0, 30.0], 4000)
    g[::17] = 0.0
    ghat2 = g * g * 10 ** rng.uniform(-5, 2, 4000)  # the pure function allows ghat2 < g^2
    ghat2[::23] = (alphas[3] / alphas[2]) ** 2  # exact 3/4 ties (rule 3 must win them)
    ghat2[::17] = 0.0
    ghat2[::34] = 3.0  # g == 0 with a remembered ghat2: still "zero_grad"
    delta, winner = conservative_step(g, ghat2, alphas)
    f, q3 = _factor(ghat2, alphas)
    counts = _rule_counts(g, f, q3, alphas)
    np.testing.assert_array_equal(counts, np.bincount(winner, minlength=5))
    assert np.all(counts[:4] > 0)
    # brute force: four proposals, smallest magnitude, first of ties
    props = np.stack([np.full_like(g, alphas[0]), alphas[1] * np.abs(g),
                      alphas[2] * np.abs(g) / np.sqrt(np.where(ghat2 > 0, ghat2, 1)),
                      alphas[3] * np.abs(g) / np.where(ghat2 > 0, ghat2, 1)])
    nz = g != 0
    np.testing.assert_allclose(delta[nz], np.sign(g[nz]) * props.min(axis=0)[nz], rtol=1e-6)
    clear = nz & (np.sort(props, axis=0)[1] > props.min(axis=0) * (1 + 1e-9))
    np.testing.assert_array_equal(winner[clear], props.argmin(axis=0)[clear])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["conservative", "adam", "sgd"])
def test_cupy_steps_match_numpy(name):
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal((30, 20)).astype(np.float32)
    grads = [rng.standard_normal((30, 20)).astype(np.float32) for _ in range(5)]
    results, fractions = [], []
    for xp in (np, cp):
        w = Tensor(xp.asarray(w0.copy()), requires_grad=True)
        opt = make_optimizer(name, {"w": w})
        for g in grads:
            w.grad = xp.asarray(g)
            opt.step()
        results.append(cp.asnumpy(w.data) if xp is cp else w.data)
        fractions.append(opt.last_rule_fractions)
        sd = opt.state_dict()
        assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k.startswith("state/")
                   and hasattr(v, "shape"))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert fractions[0].keys() == fractions[1].keys()


@pytest.mark.gpu
@pytest.mark.parametrize("update_first", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_gpu_conservative_step_equals_numpy_bit_for_bit(update_first, dtype):
    """lab.optim.conservative_gpu (one kernel) on the steps that count no rules, the array
    code on the others: the same bits as numpy, zero and NaN gradients included."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((40, 25)).astype(dtype)
    grads = [(rng.standard_normal((40, 25)) * 10.0 ** rng.uniform(-5, 1, (40, 25))).astype(dtype)
             for _ in range(8)]
    grads[3][0, :5] = 0.0
    grads[6][1, 1] = np.nan
    out = []
    for xp in (np, cp):
        w = Tensor(xp.asarray(w0.copy()), requires_grad=True)
        opt = ConservativeOptimizer({"w": w}, update_first=update_first, record_every=3)
        opt.scale_step_sizes(0.5)
        for g in grads:
            w.grad = xp.asarray(g)
            opt.step()
        out.append([cp.asnumpy(a) if xp is cp else a for a in
                    (w.data, *(opt.state["w"][f"avg{k}"] for k in range(3)))])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_update_after_reading_uses_earlier_gradients_and_rule1_brakes_spikes():
    w = param(np.zeros(1))
    opt = ConservativeOptimizer({"w": w}, alphas=(0.05, 10.0, 0.01, 10.0), gammas=(1.0, math.e ** 3),
                                init_sq=1e-4, update_first=False)
    w.grad = np.array([0.01])
    opt.step()  # ghat2 = init 1e-4: rule 3 gives 0.01 * 0.01 / 0.01 = 0.01
    assert w.data[0] == pytest.approx(-0.01) and opt.last_rule_fractions["rule3"] == 1.0
    np.testing.assert_allclose(opt.state["w"]["avg0"], [1e-4])  # updated after the step
    w.grad = np.array([100.0])  # a spike: rules 2-4 see only the small past gradients
    opt.step()
    assert w.data[0] == pytest.approx(-0.06) and opt.last_rule_fractions["rule1"] == 1.0
    # the default reading can never let rule 1 win when alpha1 > alpha3
    w2 = param(np.zeros(1))
    opt2 = ConservativeOptimizer({"w": w2}, alphas=(0.05, 10.0, 0.01, 10.0), init_sq=1e-4)
    for g in (0.01, 100.0):
        w2.grad = np.array([g])
        opt2.step()
        assert opt2.last_rule_fractions["rule1"] == 0.0
