"""The DIM paper's analysis tools: MI estimates of what a representation keeps (MINE) and how
factorised it is (the neural dependency measure), with their validation on known MI.

``from eval import estimate_mutual_information, neural_dependency_measure`` for the numbers;
``mutual_information`` and ``neural_dependency`` give how training went as well.
``python -m eval.analysis.validate`` checks the estimators on correlated Gaussians.
"""

from eval.analysis.fitting import CriticEstimate
from eval.analysis.mine import estimate_mutual_information, mutual_information
from eval.analysis.ndm import neural_dependency, neural_dependency_measure

__all__ = [
    "CriticEstimate",
    "estimate_mutual_information",
    "mutual_information",
    "neural_dependency",
    "neural_dependency_measure",
]
