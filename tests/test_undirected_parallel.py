"""The worker threads of the RBM updates (lab.undirected.parallel) and the data checks."""
import threading

import numpy as np
import pytest

from lab.undirected._base import check_data
from lab.undirected.parallel import Slices, split


def test_the_calling_thread_takes_the_last_slice_after_meanwhile():
    runner = Slices(2)
    seen, order = {}, []
    caller = threading.get_ident()

    def fn(sl):
        seen[sl.start] = threading.get_ident()
        order.append(("slice", sl.start))

    runner.run(fn, split(10, 2), meanwhile=lambda: order.append(("meanwhile", None)))
    assert seen[5] == caller and seen[0] != caller
    # in the calling thread, meanwhile comes before its own slice
    assert order.index(("meanwhile", None)) < order.index(("slice", 5))


def test_one_job_runs_meanwhile_then_the_slices_in_order():
    order = []
    Slices(1).run(lambda sl: order.append(sl.start), split(9, 3),
                  meanwhile=lambda: order.append("meanwhile"))
    assert order == ["meanwhile", 0, 3, 6]


@pytest.mark.parametrize("failing", [0, 5])
def test_an_error_in_any_slice_reaches_the_caller(failing):
    done = []

    def fn(sl):
        if sl.start == failing:
            raise RuntimeError(f"slice {sl.start}")
        done.append(sl.start)

    with pytest.raises(RuntimeError, match=f"slice {failing}"):
        Slices(2).run(fn, split(10, 2))
    assert done == [5 - failing]     # the other slice still ran to its end


def test_split_keeps_the_softmax_group_whole():
    slices = split(13, 2, keep_tail=3)
    assert slices[-1].stop == 13 and slices[-1].start <= 10
    assert sum(s.stop - s.start for s in slices) == 13


@pytest.mark.parametrize("value,allow,match", [
    (np.nan, False, "NaN"), (0.5, False, "binary"), (np.inf, True, "NaN"), (1.5, True, "\\[0, 1\\]")])
def test_data_checks_find_a_bad_value_in_the_last_block(value, allow, match):
    X = np.zeros((120_000, 6), np.float32)      # several of check_data's blocks
    X[-1, -1] = value
    with pytest.raises(ValueError, match=match):
        check_data(X, allow_probabilities=allow)
    X[-1, -1] = 1.0
    assert check_data(X, allow_probabilities=allow) is X


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("draw", ["hidden_uniforms", "visible_uniforms"])
def test_a_failed_draw_stops_the_update_with_an_error(draw, n_jobs, monkeypatch):
    # the workers sample with the hidden uniforms while the calling thread draws the
    # visible ones: a failure of either stops every slice before its weights move
    from lab.undirected import BinaryRBM
    X = (np.random.default_rng(0).random((40, 30)) < 0.3).astype(np.float32)
    rbm = BinaryRBM(300, algorithm="pcd", n_fantasy=10, batch_size=10, n_jobs=n_jobs,
                    random_state=0).partial_fit(X[:10])
    before = rbm.components_.copy()

    def broken(*args):
        raise MemoryError("no room for uniforms")

    monkeypatch.setattr(rbm._phases, draw, broken)
    with pytest.raises((MemoryError, RuntimeError)) as err:
        rbm.partial_fit(X[10:20])
    chain = [err.value, err.value.__context__]
    assert any(isinstance(e, MemoryError) for e in chain if e is not None)
    np.testing.assert_array_equal(rbm.components_, before)   # no half-applied update


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_the_update_draws_hidden_then_visible_uniforms_from_one_stream(n_jobs, monkeypatch):
    from lab.undirected import BinaryRBM
    X = (np.random.default_rng(0).random((40, 30)) < 0.3).astype(np.float32)
    rbm = BinaryRBM(300, algorithm="fpcd", n_fantasy=10, batch_size=10, n_jobs=n_jobs,
                    random_state=0).partial_fit(X[:10])
    ph, calls = rbm._phases, []
    for name in ("hidden_uniforms", "visible_uniforms"):
        real = getattr(ph, name)
        monkeypatch.setattr(ph, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    rbm.partial_fit(X[10:20])
    rbm.partial_fit(X[20:30])
    assert calls == ["hidden_uniforms", "visible_uniforms"] * 2
