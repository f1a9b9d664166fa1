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

The persistent estimators follow the pseudocode of 3.2.4 step by step: the negative
statistics are taken from the particles *before* they move (step 3), then the particles
make one full Gibbs update (step 4) under the weights the negative phase used (the fast
weights for FPCD; for PCD those are the slow weights, so FPCD with a zero fast learning
rate is PCD, bit for bit).

The visible layer is a :class:`VisibleLayer`: all binary, or binary units followed by
one softmax group (the label unit of the classification RBM, 3.3.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.undirected._base import sigmoid_

ALGORITHMS = ("cd", "mfcd", "pl", "pcd", "fpcd")
PERSISTENT = ("pcd", "fpcd")


@dataclass(frozen=True)
class VisibleLayer:
    """Binary visible units, the last ``n_softmax`` of which form one softmax group."""

    n_softmax: int = 0

    def mean_(self, pre, xp):
        """Conditional means from pre-activations, in place."""
        k = self.n_softmax
        if k == 0:
            return sigmoid_(pre, xp)
        sigmoid_(pre[:, :-k], xp)
        lab = pre[:, -k:]
        lab -= lab.max(axis=1, keepdims=True)
        xp.exp(lab, out=lab)
        lab /= lab.sum(axis=1, keepdims=True)
        return pre

    def sample_(self, pre, stream, xp):
        """A sample from the conditional distribution given pre-activations (overwrites ``pre``)."""
        mean = self.mean_(pre, xp)
        k = self.n_softmax
        if k == 0:
            return (stream.uniform(mean.shape, dtype=mean.dtype) < mean).astype(mean.dtype)
        out = xp.empty_like(mean)
        bin_part = mean[:, :-k]
        out[:, :-k] = stream.uniform(bin_part.shape, dtype=mean.dtype) < bin_part
        out[:, -k:] = sample_categorical(mean[:, -k:], stream, xp)
        return out


def sample_categorical(p, stream, xp):
    """One-hot samples from the rows of ``p`` (n, k)."""
    u = stream.uniform((p.shape[0], 1), dtype=p.dtype)
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
    return (stream.uniform(p.shape, dtype=p.dtype) < p).astype(p.dtype)


def statistics_gradient(v_pos, h_pos, v_neg, h_neg, xp):
    """Positive minus negative sufficient statistics, each averaged over its own batch."""
    n_pos, n_neg = v_pos.shape[0], v_neg.shape[0]
    gW = (h_pos * (1.0 / n_pos)).T @ v_pos
    gW -= (h_neg * (1.0 / n_neg)).T @ v_neg
    gb = v_pos.mean(axis=0) - v_neg.mean(axis=0)
    gc = h_pos.mean(axis=0) - h_neg.mean(axis=0)
    return gW, gb, gc


def cd_gradient(v_pos, W, b, c, k, stream, visible: VisibleLayer, xp):
    """CD-k: the negative data are k full Gibbs steps away from the training cases."""
    h_pos = hidden_mean(v_pos, W, c, xp)
    h = bernoulli(h_pos, stream)
    for step in range(k):
        v = visible.sample_(visible_pre(h, W, b), stream, xp)
        h_neg = hidden_mean(v, W, c, xp)
        if step < k - 1:
            h = bernoulli(h_neg, stream)
    return statistics_gradient(v_pos, h_pos, v, h_neg, xp)


def mfcd_gradient(v_pos, W, b, c, k, visible: VisibleLayer, xp):
    """Mean-field CD (Welling & Hinton 2002): deterministic, probabilities throughout."""
    h_pos = hidden_mean(v_pos, W, c, xp)
    h = h_pos
    for _ in range(k):
        v = visible.mean_(visible_pre(h, W, b), xp)
        h = hidden_mean(v, W, c, xp)
    return statistics_gradient(v_pos, h_pos, v, h, xp)


def persistent_gradient(v_pos, particles, W, b, c, neg_params, stream, visible: VisibleLayer, xp):
    """PCD / FPCD, steps 2-5 of the pseudocode in 3.2.4.

    ``neg_params`` are the weights of the negative phase: ``(W, b, c)`` for PCD,
    ``(W + W_fast, b + b_fast, c + c_fast)`` for FPCD. Returns the gradient and the
    particles after one full Gibbs update.
    """
    Wn, bn, cn = neg_params
    h_pos = hidden_mean(v_pos, W, c, xp)                     # step 2 (slow weights)
    h_neg = hidden_mean(particles, Wn, cn, xp)               # step 3 (fast weights)
    h_sample = bernoulli(h_neg, stream)                      # step 4: full Gibbs update
    new_particles = visible.sample_(visible_pre(h_sample, Wn, bn), stream, xp)
    grads = statistics_gradient(v_pos, h_pos, particles, h_neg, xp)   # step 5
    return grads, new_particles


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
