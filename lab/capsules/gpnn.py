"""GPNN: the general-purpose neural network with dropout (thesis 2.2, fig 2.2).

Three equal hidden layers (logistic, logistic, squaring), 50% dropout on every
hidden unit while training, and skip connections from hidden layers 1 and 2 straight
to the linear output ("if there would be vanishing gradients, at least the chain
input -> hidden1 -> output would still learn", 2.2.1). It is the encoder, and, with
``dropout=0``, the distortion -> AC-in-CC poses function of a CC (2.3.4, fig 2.12).

Dropout is the thesis's (1.8.4): no rescaling while training; at test time no units
are dropped and the *outgoing* weights of the dropped-out layers are multiplied by
``1 - rate`` (halved for 50%). Multiplying a hidden layer's values by ``1 - rate`` is
the same thing, and is what ``forward(..., train=False)`` does; ``test_time_weights``
gives the explicitly scaled weights (the test suite checks both agree). The output
units are not dropped here: the distortion variables are dropped by the decoder,
and are never halved at test time (2.6.2).
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Tensor, dropout, matmul, sigmoid, square
from lab.backend import to_numpy

#: The unit type of each hidden layer (2.2.2).
HIDDEN_KINDS = ("logistic", "logistic", "square")


class GPNN:
    """``GPNN(n_in, n_hidden, n_out, dropout=0.5)``: parameters in ``self.params``.

    ``forward(x, train, stream)`` maps (B, n_in) to (B, n_out). ``output_bias``
    (n_out,) sets the initial output: the code's default values, so an untrained
    encoder already proposes sensible poses. ``out_scale`` is the std of the
    initial output weights relative to 1/sqrt(fan-in).
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, dropout: float = 0.5,
                 rng: np.random.Generator | None = None, output_bias=None,
                 out_scale: float = 0.3, dtype=np.float32, prefix: str = "gpnn"):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {dropout}")
        self.n_in, self.n_hidden, self.n_out, self.dropout = n_in, n_hidden, n_out, dropout
        rng = rng or np.random.default_rng(0)
        h = n_hidden

        def w(fan_in, fan_out, scale=1.0):
            return (rng.standard_normal((fan_in, fan_out)) * scale / np.sqrt(fan_in)).astype(dtype)

        bias_out = np.zeros(n_out) if output_bias is None else np.asarray(output_bias, dtype=np.float64)
        if bias_out.shape != (n_out,):
            raise ValueError(f"output_bias has shape {bias_out.shape}, expected ({n_out},)")
        # The squaring layer gets smaller incoming weights: its units start near 0
        # and grow only where useful (squares of large values explode gradients).
        arrays = {
            "W1": w(n_in, h, 2.0), "b1": np.zeros(h, dtype),
            "W2": w(h, h, 2.0), "b2": np.zeros(h, dtype),
            "W3": w(h, h, 1.0), "b3": np.zeros(h, dtype),
            "Wo1": w(h, n_out, out_scale), "Wo2": w(h, n_out, out_scale),
            "Wo3": w(h, n_out, out_scale), "bo": bias_out.astype(dtype),
        }
        self.params = {f"{prefix}.{k}": Tensor(v, requires_grad=True) for k, v in arrays.items()}
        self.prefix = prefix

    def p(self, name: str) -> Tensor:
        return self.params[f"{self.prefix}.{name}"]

    def forward(self, x, train: bool = False, stream=None, return_hidden: bool = False):
        """Output (B, n_out); with ``return_hidden`` also the three hidden layers' values."""
        p = self.p
        rate = self.dropout if train else 0.0
        keep = 1.0 if (train or self.dropout == 0.0) else 1.0 - self.dropout

        def drop(h):
            if rate > 0.0:
                if stream is None:
                    raise ValueError("GPNN.forward(train=True) with dropout needs a random stream")
                return dropout(h, rate, stream)
            return h * keep if keep != 1.0 else h

        h1 = drop(sigmoid(matmul(x, p("W1")) + p("b1")))
        h2 = drop(sigmoid(matmul(h1, p("W2")) + p("b2")))
        h3 = drop(square(matmul(h2, p("W3")) + p("b3")))
        out = matmul(h1, p("Wo1")) + matmul(h2, p("Wo2")) + matmul(h3, p("Wo3")) + p("bo")
        return (out, (h1, h2, h3)) if return_hidden else out

    def test_time_weights(self) -> dict[str, np.ndarray]:
        """The weights of the deterministic test-time network: every weight leaving a
        dropped-out layer times ``1 - rate`` (2.6.2); the rest unchanged."""
        keep = 1.0 - self.dropout
        out = {}
        for key, t in self.params.items():
            name = key.split(".")[-1]
            scale = keep if name in ("W2", "W3", "Wo1", "Wo2", "Wo3") else 1.0
            out[name] = to_numpy(t.data) * scale
        return out
