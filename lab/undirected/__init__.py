"""Undirected generative models of thesis chapter 3: training by (approximate) likelihood
gradients, exact and AIS evaluation, and the chapter's experiments.

Models (scikit-learn style estimators)
    BinaryRBM           rbm.py             binary RBM: CD-k, MF-CD, PL, PCD, FPCD (1.3.2, 3.2)
    ClassificationRBM   classification.py  RBM with a softmax label unit (3.3.3)
    FullyVisibleMRF     mrf.py             fully connected binary MRF: PL, PCD, exact (3.3.4)

Algorithms and evaluation
    algorithms.py   the gradient estimators (local vs global unlearning, 3.1-3.2)
    binary_products.py  products with binary states as row sums (CPU, numba)
    logistic.py     the float32 sigmoid in one vectorized pass (CPU, numba)
    philox_uniforms.py  float32 uniforms for Gibbs sampling, Philox4x32-10 (CPU, numba)
    fpcd_step.py    FPCD's slow and fast weight steps in one pass (CPU, numba)
    compiled.py     loads those kernels; without numba the numpy paths serve
    parallel.py     worker threads over slices of a layer (CPU)
    partition.py    exact log Z by enumeration (fast split scheme for 2^25 states)
    ais.py          annealed importance sampling (Salakhutdinov & Murray 2008, 3.3.5)
    experiments.py  figs 3.1-3.6 as functions returning their data
"""
from lab.undirected.ais import AISResult, ais_log_partition, default_betas
from lab.undirected.algorithms import ALGORITHMS
from lab.undirected.classification import ClassificationRBM
from lab.undirected.mrf import FullyVisibleMRF
from lab.undirected.partition import mrf_log_partition, rbm_log_partition
from lab.undirected.rbm import BinaryRBM, LogPartition
from lab.undirected._base import NotFittedError

__all__ = ["ALGORITHMS", "AISResult", "BinaryRBM", "ClassificationRBM", "FullyVisibleMRF",
           "LogPartition", "NotFittedError", "ais_log_partition", "default_betas",
           "mrf_log_partition", "rbm_log_partition"]
