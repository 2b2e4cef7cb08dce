"""The evaluation harness: data, frozen features, probes, baselines, comparisons.

Depends on ``dim_ssl`` through its public API only; ``dim_ssl`` never imports this package.
"""

from eval.analysis import estimate_mutual_information, neural_dependency_measure
from eval.probes.knn import knn_accuracy
from eval.probes.linear import linear_probe_accuracy
from eval.probes.mlp import mlp_probe_accuracy

__all__ = [
    "estimate_mutual_information",
    "knn_accuracy",
    "linear_probe_accuracy",
    "mlp_probe_accuracy",
    "neural_dependency_measure",
]
