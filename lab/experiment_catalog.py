"""The thesis chapter 3 experiments by name, with one-line descriptions.

A module of its own without imports, so that the CLI can list the experiments without
loading ``lab.undirected`` (``lab --help`` stays fast); ``lab.undirected.experiments``
maps the same names to the functions that run them.
"""
CHAPTER3 = {
    "fig3.1": "784x25 RBM on MNIST: exact test log-likelihood vs time (CD-1, CD-10, MF-CD, PCD, FPCD)",
    "fig3.2": "samples from 784x500 RBMs trained with PCD and CD-1 (plus AIS test log-likelihood)",
    "fig3.3": "classification RBM on MNIST: test accuracy vs time (CD-1, CD-10, MF-CD, PCD, FPCD)",
    "fig3.4": "25-unit fully visible MRF on 5x5 patches: PL, PCD, exact gradient (exact test LL)",
    "fig3.5": "100-hidden RBM on outlines: AIS test log-likelihood, with/without weight decay",
    "fig3.6": "PCD vs FPCD classification RBMs, hidden units chosen on validation data",
}
