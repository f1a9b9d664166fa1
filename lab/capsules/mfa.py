"""A small mixture of factor analysers (Ghahramani & Hinton, 1996) for thesis fig 2.17.

The thesis fits an MFA with 10 components once to MNIST pixels and once to the AC
iGeo poses the encoder produces, and shows the component means (the pose means
rendered by the decoder). This is plain EM with diagonal noise, kept small: a few
factors, a few dozen iterations, float64 numpy.
"""
from __future__ import annotations

import numpy as np


class MFA:
    """``MFA(n_components=10, n_factors=4, n_iter=30, seed=0).fit(X)``; learned ``means_``
    (C, D), ``loadings_`` (C, D, F), ``noise_`` (D,), ``weights_`` (C,), ``loglik_`` per iteration."""

    def __init__(self, n_components: int = 10, n_factors: int = 4, n_iter: int = 30,
                 seed: int = 0, min_noise: float = 1e-3):
        self.n_components, self.n_factors, self.n_iter = n_components, n_factors, n_iter
        self.seed, self.min_noise = seed, min_noise

    def _log_resp(self, X):
        C, F = self.n_components, self.n_factors
        psi_inv = 1.0 / self.noise_
        out = np.empty((len(X), C))
        for c in range(C):
            L = self.loadings_[c]                                   # (D, F)
            # Woodbury: (LL' + Ψ)^-1 = Ψ^-1 - Ψ^-1 L (I + L'Ψ^-1 L)^-1 L' Ψ^-1
            M = np.eye(F) + (L.T * psi_inv) @ L
            Minv = np.linalg.inv(M)
            Xc = X - self.means_[c]
            a = Xc * psi_inv
            b = a @ L                                               # (N, F)
            maha = (Xc * a).sum(1) - np.einsum("nf,fg,ng->n", b, Minv, b)
            logdet = np.log(self.noise_).sum() + np.linalg.slogdet(M)[1]
            out[:, c] = np.log(self.weights_[c]) - 0.5 * (maha + logdet + X.shape[1] * np.log(2 * np.pi))
        return out

    def fit(self, X) -> "MFA":
        X = np.asarray(X, dtype=np.float64)
        N, D = X.shape
        C, F = self.n_components, self.n_factors
        rng = np.random.default_rng(self.seed)
        self.means_ = X[rng.choice(N, C, replace=False)].copy()
        self.noise_ = np.maximum(X.var(0), self.min_noise)
        self.loadings_ = rng.standard_normal((C, D, F)) * np.sqrt(self.noise_)[None, :, None] * 0.1
        self.weights_ = np.full(C, 1.0 / C)
        self.loglik_ = []
        for _ in range(self.n_iter):
            lr = self._log_resp(X)
            mx = lr.max(1, keepdims=True)
            ll = mx[:, 0] + np.log(np.exp(lr - mx).sum(1))
            self.loglik_.append(float(ll.mean()))
            R = np.exp(lr - ll[:, None])                            # (N, C)
            Nc = R.sum(0) + 1e-10
            self.weights_ = Nc / N
            psi_inv = 1.0 / self.noise_
            new_noise = np.zeros(D)
            for c in range(C):
                L = self.loadings_[c]
                Minv = np.linalg.inv(np.eye(F) + (L.T * psi_inv) @ L)
                Xc = X - self.means_[c]
                Ez = (Xc * psi_inv) @ L @ Minv                      # (N, F) E[z|x]
                r = R[:, c]
                # Joint M-step for [L, mu] with augmented factors [z, 1].
                Ez1 = np.concatenate([Ez, np.ones((N, 1))], 1)
                Ezz = np.zeros((F + 1, F + 1))
                Ezz[:F, :F] = Minv * Nc[c] + (Ez * r[:, None]).T @ Ez
                Ezz[:F, F] = Ezz[F, :F] = (Ez * r[:, None]).sum(0)
                Ezz[F, F] = Nc[c]
                XEz = (X * r[:, None]).T @ Ez1                      # (D, F+1)
                Lt = XEz @ np.linalg.inv(Ezz + 1e-8 * np.eye(F + 1))
                self.loadings_[c], self.means_[c] = Lt[:, :F], Lt[:, F]
                new_noise += ((X * X) * r[:, None]).sum(0) - (Lt * XEz).sum(1)
            self.noise_ = np.maximum(new_noise / N, self.min_noise)
        return self

    def score(self, X) -> float:
        """Mean log-likelihood per case."""
        lr = self._log_resp(np.asarray(X, dtype=np.float64))
        mx = lr.max(1, keepdims=True)
        return float((mx[:, 0] + np.log(np.exp(lr - mx).sum(1))).mean())
