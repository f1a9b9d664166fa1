"""Gradient estimators for RBMs (thesis chapter 3): local and global unlearning.

Each estimator returns ``(gW, gb, gc)``: an estimate of the gradient of the mean
training log-likelihood with respect to the weights (n_hidden, n_visible), the visible
biases and the hidden biases (ascent direction). They differ only in where the
"negative" (unlearning) configurations come from (3.1.3, 3.1.4):

========  ==========================================================================
``cd``    CD-k: k full Gibbs steps from the training cases (local unlearning, 1.3.2)
``mfcd``  mean-field CD: the same steps with probabilities instead of samples
``pl``    pseudo-likelihood (Besag 1986): the exact gradient of sum_i log P(v_i|v_-i)
``pcd``   persistent CD (3.2.1): persistent fantasy particles, one Gibbs step per update
``fpcd``  fast PCD (3.2.4): PCD whose particles move under slow + fast weights
========  ==========================================================================

The persistent estimators (``BinaryRBM._persistent_update``) follow the pseudocode of
3.2.4 step by step: the negative statistics are taken from the particles *before* they
move (step 3), then the particles make one full Gibbs update (step 4) under the weights
the negative phase used (the fast weights for FPCD; for PCD those are the slow weights,
so FPCD with a zero fast learning rate is PCD, bit for bit).

The visible layer is a :class:`VisibleLayer`: all binary, or binary units followed by
one softmax group (the label unit of the classification RBM, 3.3.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.backend import DEFAULT_FLOAT
from lab.undirected import binary_products as bp
from lab.undirected import philox_uniforms
from lab.undirected._base import sigmoid_

ALGORITHMS = ("cd", "mfcd", "pl", "pcd", "fpcd")
PERSISTENT = ("pcd", "fpcd")


@dataclass(frozen=True)
class VisibleLayer:
    """Binary visible units, the last ``n_softmax`` of which form one softmax group.

    ``has_group=False`` marks a slice of the layer that does not hold the group."""

    n_softmax: int = 0

    def mean_(self, pre, xp, has_group: bool = True):
        """Conditional means from pre-activations, in place."""
        k = self.n_softmax if has_group else 0
        if k == 0:
            return sigmoid_(pre, xp)
        sigmoid_(pre[:, :-k], xp)
        lab = pre[:, -k:]
        lab -= lab.max(axis=1, keepdims=True)
        xp.exp(lab, out=lab)
        lab /= lab.sum(axis=1, keepdims=True)
        return pre

    def uniforms(self, n: int, n_visible: int, stream, dtype):
        """The random numbers one visible sample of ``n`` rows uses: one per binary unit,
        one per row for the softmax group."""
        k = self.n_softmax
        u = philox_uniforms.draw(stream, (n, n_visible - k), dtype)
        return (u, philox_uniforms.draw(stream, (n, 1), dtype) if k else None)

    def sample_(self, pre, u, xp, start: int = 0, has_group: bool = True):
        """Sample the columns ``start..`` of the layer from their pre-activations ``pre``
        (overwritten), with the uniforms ``u`` of :meth:`uniforms`."""
        k = self.n_softmax if has_group else 0
        mean = self.mean_(pre, xp, has_group)
        u_bin, u_cat = u
        nb = mean.shape[1] - k
        out = xp.empty_like(mean)
        out[:, :nb] = u_bin[:, start:start + nb] < mean[:, :nb]
        if k:
            out[:, nb:] = categorical(mean[:, nb:], u_cat, xp)
        return out


def categorical(p, u, xp):
    """One-hot samples from the rows of ``p`` (n, k) given one uniform per row."""
    idx = (xp.cumsum(p, axis=1) < u).sum(axis=1)
    idx = xp.minimum(idx, p.shape[1] - 1)
    out = xp.zeros_like(p)
    out[xp.arange(p.shape[0]), idx] = 1
    return out


def hidden_mean(v, W, c, xp):
    """P(h = 1 | v) for a batch ``v`` (n, n_visible)."""
    pre = v @ W.T
    pre += c
    return sigmoid_(pre, xp)


def visible_pre(h, W, b):
    pre = h @ W
    pre += b
    return pre


def bernoulli(p, stream):
    return (philox_uniforms.draw(stream, p.shape, p.dtype) < p).astype(p.dtype)


class Phases:
    """The layer-parallel steps of one update: hidden units are independent given the
    visible layer and vice versa, so each step splits a layer between worker threads.
    Random numbers are drawn beforehand in the calling thread, in a fixed order, so
    results do not depend on the thread schedule (on the CPU, float32 uniforms come from
    ``philox_uniforms``, keyed by the stream). Products with binary visible states
    are row sums (``lab.undirected.binary_products``) when the weights are laid out
    for them."""

    def __init__(self, runner, n_hidden: int, visible: VisibleLayer, n_visible: int, stream, xp):
        self.runner, self.stream, self.xp = runner, stream, xp
        self.visible = visible
        self.n_hidden, self.n_visible = n_hidden, n_visible
        n = runner.n_jobs
        self.hidden_slices = _split(n_hidden, n)
        self.visible_slices = _split(n_visible, n, keep_tail=visible.n_softmax)
        self._states_memo: list = []

    def forget_states(self) -> None:
        """Called at the start of each update: arrays may change in place between updates."""
        self._states_memo = []

    def states(self, v):
        """``BinaryStates`` of ``v`` (None: use dense products), remembered for the rest
        of this update: the gradient step reuses those of its positive and negative
        data (CD-k visits k + 1 batches)."""
        for arr, st in self._states_memo:
            if arr is v:
                return st
        st = bp.BinaryStates.of(v)
        self._states_memo.append((v, st))
        return st

    def hidden(self, v, W, c, u=None):
        """P(h | v) and, given uniforms ``u``, a sample: ``(probs, sample or None)``."""
        xp = self.xp
        probs = xp.empty((v.shape[0], self.n_hidden), dtype=v.dtype)
        sample = None if u is None else xp.empty_like(probs)
        states = self.states(v) if bp.weights_fit(W) else None

        def step(sl):
            pre = probs[:, sl]
            if states is None:
                xp.matmul(v, W[sl].T, out=pre)
            else:
                bp.hidden_pre(states, W.T, sl.start, probs, sl)
            pre += c[sl]
            sigmoid_(pre, xp)
            if u is not None:
                xp.less(u[:, sl], pre, out=sample[:, sl])

        self.runner.run(step, self.hidden_slices)
        return probs, sample

    def visible_mean(self, h, W, b):
        xp = self.xp
        out = xp.empty((h.shape[0], self.n_visible), dtype=h.dtype)

        def step(sl):
            pre = h @ W[:, sl]
            pre += b[sl]
            out[:, sl] = self.visible.mean_(pre, xp, has_group=sl.stop == self.n_visible)

        self.runner.run(step, self.visible_slices)
        return out

    def visible_sample(self, h, W, b):
        """A sample of the visible layer given ``h``."""
        xp = self.xp
        u = self.visible_uniforms(h.shape[0], h.dtype)
        out = xp.empty((h.shape[0], self.n_visible), dtype=h.dtype)

        def step(sl):
            pre = h @ W[:, sl]
            pre += b[sl]
            out[:, sl] = self.visible.sample_(pre, u, xp, sl.start, has_group=sl.stop == self.n_visible)

        self.runner.run(step, self.visible_slices)
        return out

    def visible_uniforms(self, n, dtype=DEFAULT_FLOAT):
        return self.visible.uniforms(n, self.n_visible, self.stream, dtype)

    def hidden_uniforms(self, n):
        return philox_uniforms.draw(self.stream, (n, self.n_hidden), DEFAULT_FLOAT)


def _split(n, parts, keep_tail=0):
    from lab.undirected.parallel import split  # noqa: PLC0415
    return split(n, parts, keep_tail)


def cd_statistics(ph: Phases, v_pos, W, b, c, k):
    """CD-k: the negative data are k full Gibbs steps away from the training cases.
    Returns ``(h_pos, v_neg, h_neg)``."""
    h_pos, h = ph.hidden(v_pos, W, c, ph.hidden_uniforms(v_pos.shape[0]))
    for step in range(k):
        v = ph.visible_sample(h, W, b)
        last = step == k - 1
        h_neg, h = ph.hidden(v, W, c, None if last else ph.hidden_uniforms(v.shape[0]))
    return h_pos, v, h_neg


def mfcd_statistics(ph: Phases, v_pos, W, b, c, k):
    """Mean-field CD (Welling & Hinton 2002): deterministic, probabilities throughout."""
    h_pos, _ = ph.hidden(v_pos, W, c)
    h = h_pos
    for _ in range(k):
        v = ph.visible_mean(h, W, b)
        h, _ = ph.hidden(v, W, c)
    return h_pos, v, h


def vcat_bias(v_pos, v_neg):
    return v_pos.mean(axis=0) - v_neg.mean(axis=0)


def free_energy(v, W, b, c, xp):
    """F(v) = -b.v - sum_j softplus(c_j + W_j.v)."""
    return -(v @ b) - xp.logaddexp(0, v @ W.T + c).sum(axis=1)


def pseudo_log_likelihood(v, W, b, c, xp=np):
    """Mean over cases of sum_i log P(v_i | v_-i) for a binary RBM."""
    x = v @ W.T + c                                            # (B, H)
    s = 1 - 2 * v                                              # flip direction
    x_flip = x[:, None, :] + s[:, :, None] * W.T[None, :, :]   # (B, V, H)
    z = -b[None, :] * s - (xp.logaddexp(0, x_flip) - xp.logaddexp(0, x)[:, None, :]).sum(axis=2)
    # z_i = F(v^i) - F(v); log P(v_i | v_-i) = log sigmoid(z_i)
    return float((-xp.logaddexp(0, -z)).sum(axis=1).mean())


def pl_gradient(v, W, b, c, xp, max_elements: int = 1 << 23):
    """The exact gradient of the mean pseudo-log-likelihood of a binary RBM.

    With ``v^i`` = ``v`` with unit ``i`` flipped and ``d_i = P(v^i_i | v_-i)``, the
    gradient of log P(v_i | v_-i) is ``d_i (g(v) - g(v^i))`` where ``g = -dF/dtheta``:
    unlearning on the one-flip neighbours of each case (the approximate R of 3.2.2).
    Cases are processed in chunks so the (B, V, H) tensor stays small.
    """
    n, n_vis = v.shape
    n_hid = W.shape[0]
    chunk = max(1, max_elements // max(1, n_vis * n_hid))
    gW = xp.zeros_like(W)
    gb = xp.zeros_like(b)
    gc = xp.zeros_like(c)
    for start in range(0, n, chunk):
        vb = v[start:start + chunk]
        x = vb @ W.T + c                                       # (B, H)
        s = 1 - 2 * vb                                         # (B, V)
        x_flip = x[:, None, :] + s[:, :, None] * W.T[None, :, :]
        sp_flip = xp.logaddexp(0, x_flip)
        sp = xp.logaddexp(0, x)
        z = -b[None, :] * s - (sp_flip - sp[:, None, :]).sum(axis=2)     # F(v^i) - F(v)
        d = sigmoid_(-z, xp)                                   # P(flipped value | rest)
        sig_flip = sigmoid_(x_flip, xp)                        # (B, V, H), reuses buffer
        sig = sigmoid_(x.copy(), xp)
        D = d.sum(axis=1)                                      # (B,)
        A = xp.einsum("bi,bij->bj", d, sig_flip)               # sum_i d_i sigma(x^i)
        gW += (D[:, None] * sig - A).T @ vb
        gW -= xp.einsum("bk,bkj->jk", d * s, sig_flip)
        gb -= (d * s).sum(axis=0)
        gc += (D[:, None] * sig - A).sum(axis=0)
    return gW / n, gb / n, gc / n
