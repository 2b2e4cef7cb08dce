"""The neural dependency measure: near zero for independent factors, clearly positive for
dependent ones, never negative.

For Gaussian y the total correlation (what NDM bounds from below) has a closed form:
``-1/2 log det(correlation matrix)``; for y = [z, rho z + sqrt(1 - rho^2) n] with z, n ~ N(0, I_k)
it is ``-k/2 log(1 - rho^2)``.
"""

import math

import pytest
import torch

from eval import neural_dependency_measure
from eval.analysis import neural_dependency
from eval.analysis.ndm import shuffle_dimensions


def gaussians(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_independent_gaussian_factors_are_near_zero():
    assert neural_dependency_measure(gaussians(4000, 8, seed=0)) < 0.05


def test_duplicated_factors_are_clearly_positive():
    # Every factor twice: the total correlation is unbounded; a budget of 20 epochs already
    # reports well above any independent case.
    z = gaussians(4000, 4, seed=1)
    assert neural_dependency_measure(torch.cat([z, z], dim=1), max_epochs=20) > 1.0


def test_dependence_orders_the_measure_and_it_stays_below_the_truth():
    # Half of the dimensions a noisy copy of the other half, more or less noisy: the NDM rises
    # with the dependence and, a lower bound, stays below the closed-form total correlation.
    z, noise = gaussians(4000, 2, seed=2), gaussians(4000, 2, seed=3)
    values, truths = [], []
    for rho in (0.5, 0.9):
        y = torch.cat([z, rho * z + math.sqrt(1 - rho**2) * noise], dim=1)
        values.append(neural_dependency_measure(y, max_epochs=20))
        truths.append(-2 / 2 * math.log(1 - rho**2))
    assert values[0] < values[1], values
    assert values[1] > 0.5 * truths[1], (values, truths)
    for value, truth in zip(values, truths):
        assert value <= 1.1 * truth + 0.02, (value, truth)


def test_the_measure_is_never_negative():
    # Few samples of independent factors: the held-out DV bound can come out below 0; the
    # measure of a KL divergence is clipped at 0, and the raw bounds stay in the history.
    result = neural_dependency(gaussians(200, 6, seed=4), max_epochs=3)
    assert result.value >= 0.0
    assert all(math.isfinite(v) for v in result.history)


def test_shuffling_keeps_every_marginal_and_breaks_the_dependence():
    z = gaussians(5000, 1, seed=5)
    y = torch.cat([z, z, -z], dim=1)
    shuffled = shuffle_dimensions(y, torch.Generator().manual_seed(0))
    for d in range(3):
        assert torch.equal(shuffled[:, d].sort().values, y[:, d].sort().values)
    correlation = torch.corrcoef(shuffled.T)
    assert (correlation - torch.eye(3)).abs().max() < 0.05


def test_the_same_seed_gives_the_same_measure():
    z = gaussians(600, 2, seed=6)
    y = torch.cat([z, z + 0.3 * gaussians(600, 2, seed=7)], dim=1)
    first = neural_dependency(y, max_epochs=3, seed=1)
    again = neural_dependency(y, max_epochs=3, seed=1)
    assert first.value == again.value and first.history == again.history


@pytest.mark.parametrize(
    "y,kwargs,message",
    [
        (torch.randn(100), {}, "y must have at least two dimensions"),
        (torch.randn(100, 3), {"estimator": "infonce"}, "unknown estimator 'infonce' for the NDM; expected one of"),
        (torch.randn(100, 3), {"shuffles": 0}, "shuffles must be an integer >= 1"),
        (torch.full((100, 3), float("inf")), {}, "y contains NaN or inf"),
    ],
)
def test_bad_inputs_are_refused(y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        neural_dependency_measure(y, **kwargs)


@pytest.mark.slow
def test_dv_training_agrees_with_jsd_training_on_a_known_dependence():
    z, noise = gaussians(6000, 3, seed=8), gaussians(6000, 3, seed=9)
    y = torch.cat([z, 0.8 * z + 0.6 * noise], dim=1)
    truth = -3 / 2 * math.log(1 - 0.8**2)  # 1.53 nats
    for estimator in ("jsd", "dv"):
        value = neural_dependency_measure(y, estimator=estimator)
        assert 0.7 * truth <= value <= 1.1 * truth, (estimator, value, truth)
