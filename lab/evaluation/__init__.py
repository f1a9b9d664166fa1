"""Evaluation of trained models: thesis 2.6 (reconstruction error) and 2.6.6 (clustering)."""
from lab.evaluation.clustering import (brute_force_accuracy, hungarian, hungarian_accuracy,
                                       kmeans, kmeans10_accuracy, label25_error,
                                       linear_assignment)
from lab.evaluation.reconstruction import data_variance, pca_baseline, reconstruction_error

__all__ = ["brute_force_accuracy", "data_variance", "hungarian", "hungarian_accuracy", "kmeans",
           "kmeans10_accuracy", "label25_error", "linear_assignment", "pca_baseline", "reconstruction_error"]
