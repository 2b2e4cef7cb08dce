"""The neural dependency measure (NDM) of the DIM paper: how far the dimensions of a
representation are from independent.

Hjelm et al., ICLR 2019, section 4 ("Neural Dependency Measure"): a discriminator is trained to
tell samples of y from samples whose every dimension is shuffled independently across the batch,
which keeps each dimension's marginal and destroys every dependence between dimensions: samples
of the product of the marginals, prod_d p(y_d). The KL divergence between p(y) and that product
is the total correlation of y: 0 exactly when the dimensions are independent, growing with their
dependence (for duplicated dimensions it is unbounded). The NDM is a lower bound on it, the
Donsker-Varadhan bound of the trained discriminator's logit on held-out samples (any function
gives a valid DV lower bound; the logit of a discriminator trained to the JSD optimum is the log
density ratio, at which the bound is tight), reported in nats and clipped at 0 (a KL divergence
is never negative; a held-out bound slightly below 0 means no dependence found).

The paper uses it to show that the prior term makes DIM's y more factorised (lower NDM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dim_ssl.estimators import mi_lower_bound_from_pairs
from eval.analysis.fitting import (
    CriticEstimate,
    MovingAverageDV,
    as_samples,
    fit_critic,
    held_out_split,
    standardise,
)
from eval.analysis.mine import mlp

__all__ = ["neural_dependency", "neural_dependency_measure", "shuffle_dimensions"]

# The objectives the discriminator can be trained with (the report is always DV).
TRAINING_OBJECTIVES = ("jsd", "dv")


def shuffle_dimensions(y: Tensor, generator: torch.Generator) -> Tensor:
    """``y`` with every column permuted independently across the rows: samples of prod_d p(y_d)."""
    n, d = y.shape
    rows = torch.stack([torch.randperm(n, generator=generator) for _ in range(d)], dim=1)  # (n, d)
    return torch.gather(y, 0, rows)


def neural_dependency_measure(y: Any, **options: Any) -> float:
    """The NDM of ``y`` in nats, >= 0 and near 0 for independent dimensions.

    ``neural_dependency(y, **options).value``: see there for the options.

    Examples:
        >>> from eval import neural_dependency_measure
        >>> neural_dependency_measure(torch.randn(4000, 8))  # independent factors
        0.0...
        >>> z = torch.randn(4000, 4)
        >>> neural_dependency_measure(torch.cat([z, z], dim=1))  # every factor twice
        2...
    """
    return neural_dependency(y, **options).value


def neural_dependency(
    y: Any,
    *,
    estimator: str = "jsd",
    held_out: float = 0.3,
    hidden_dim: int = 64,
    batch_size: int = 256,
    lr: float = 3e-3,
    max_epochs: int = 200,
    patience: int = 10,
    shuffles: int = 4,
    ema_rate: float = 0.01,
    seed: int = 0,
) -> CriticEstimate:
    """Trains the NDM discriminator on part of the samples and reports its DV bound on the rest.

    Protocol (as ``eval.analysis.mine``): a random split into a training part and a held-out part
    (``held_out`` of the samples; half to validate, half to test), each dimension standardised
    with the training part's statistics (a map of each dimension alone: the total correlation
    does not change). A discriminator ``T: R^D -> R`` (an MLP) is trained with Adam on batches of
    the training part: the batch against the batch with its dimensions shuffled across it. After
    every epoch the DV bound ``mean T(y) - log mean e^T(shuffled y)`` on the validation half
    decides early stopping; the reported value is that bound on the test half, clipped at 0.
    The held-out halves are shuffled ``shuffles`` times (fixed draws) for more negatives.

    Args:
        y: ``(N, D)`` samples (array or tensor), D >= 2.
        estimator: the discriminator's training objective: ``"jsd"`` (the paper's, a GAN
            discriminator's cross-entropy; stable) or ``"dv"`` (with MINE's moving-average
            gradient correction). The reported bound is DV either way.
        held_out: fraction of the samples kept from training (half to validate, half to test).
        hidden_dim: width of the discriminator's hidden layers.
        batch_size: samples per training batch (the shuffles are within the batch).
        lr: Adam's learning rate.
        max_epochs: the most passes over the training part.
        patience: epochs without a better validation bound before stopping.
        shuffles: independent shufflings of each held-out half whose samples are the negatives.
        ema_rate: DV training only: MINE's moving-average rate.
        seed: the one source of randomness (split, weights, batches, shuffles).

    Returns:
        A ``CriticEstimate`` whose ``value`` is the NDM (>= 0, nats); ``validation`` and
        ``history`` hold the unclipped validation bounds.

    Raises:
        ValueError: for fewer than two dimensions, malformed or non-finite samples, too few
            samples for the split, an unknown training objective or bad options.
    """
    if estimator not in TRAINING_OBJECTIVES:
        known = ", ".join(TRAINING_OBJECTIVES)
        raise ValueError(f"unknown estimator {estimator!r} for the NDM; expected one of {known}")
    if isinstance(shuffles, bool) or not isinstance(shuffles, int) or shuffles < 1:
        raise ValueError(f"shuffles must be an integer >= 1; got {shuffles!r}")
    corrected = MovingAverageDV(ema_rate)
    y = as_samples(y, "y")
    if y.shape[1] < 2:
        raise ValueError(f"y must have at least two dimensions for their dependence to mean anything; got {y.shape[1]}")

    generator = torch.Generator().manual_seed(seed)
    split = held_out_split(y.shape[0], held_out, generator)
    y = standardise(y, y[split.train])
    train = y[split.train]
    # Fixed shuffles of the held-out halves, so that every epoch is judged on the same negatives.
    held = {
        name: (y[indices], torch.cat([shuffle_dimensions(y[indices], generator) for _ in range(shuffles)]))
        for name, indices in (("validation", split.validation), ("test", split.test))
    }

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = mlp(y.shape[1], hidden_dim, 1)

    def score(samples: Tensor) -> Tensor:
        return critic(samples).squeeze(-1)

    def train_loss(batch: Tensor) -> Tensor:
        real = train[batch]
        positive, negative = score(real), score(shuffle_dimensions(real, generator))
        bound = mi_lower_bound_from_pairs(positive, negative, estimator)
        return corrected.loss(positive.mean(), bound) if estimator == "dv" else -bound

    def dv_bound(name: str) -> float:
        real, shuffled = held[name]
        # DV over all of them: the positives repeated to pair with the `shuffles` draws.
        return mi_lower_bound_from_pairs(score(real).repeat(shuffles), score(shuffled), "dv").item()

    epochs, steps, stopped_early, history, best = fit_critic(
        critic,
        train_loss,
        lambda: dv_bound("validation"),
        len(split.train),
        generator,
        batch_size=batch_size,
        lr=lr,
        max_epochs=max_epochs,
        patience=patience,
    )
    with torch.no_grad():
        value = max(0.0, dv_bound("test"))
    return CriticEstimate(
        value=value,
        validation=best,
        epochs=epochs,
        steps=steps,
        stopped_early=stopped_early,
        history=history,
        sizes=(len(split.train), len(split.validation), len(split.test)),
    )
