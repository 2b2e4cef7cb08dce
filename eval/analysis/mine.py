"""MINE: an estimate of the mutual information I(X; Y) from paired samples, by training a critic.

Belghazi et al., "Mutual Information Neural Estimation", ICML 2018; the DIM paper (Hjelm et al.,
ICLR 2019, table 1's MINE column) uses it to measure what an encoder's output keeps of its input.

A critic ``T(x, y)`` is trained to maximise a lower bound of ``dim_ssl`` on the scores of a batch
of pairs: the joint pairs ``(x_i, y_i)`` against the product-of-marginals pairs ``(x_i, y_j)``,
``j != i`` (every other y of the batch: y shuffled across the batch, all shuffles at once). The
critic is separable, ``T(x, y) = <f(x), g(y)> / sqrt(E)`` with two small MLPs f and g (the DIM
paper's encode-and-dot-product shape), so the N^2 scores of a batch are one matrix product.

The bounds (``dim_ssl.mi_lower_bound``, in nats):

- ``"dv"`` (MINE): Donsker-Varadhan, ``mean_pos T - log mean_neg e^T``. Can reach the MI itself;
  its minibatch gradient is biased, which MINE corrects with a moving average of ``mean_neg
  e^T`` in the gradient's denominator (``ema_rate``); high variance for large MI.
- ``"infonce"``: at most log K, K the candidates of one positive: the estimate on the test half
  saturates at ``log(test samples)``.
- ``"jsd"``: at most 2 log 2; not an MI value, but it rises with the MI.

The critic is trained on part of the pairs and the bound is reported on pairs it never saw
(``eval.analysis.fitting``): the training part's bound is inflated by overfitting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dim_ssl import mi_lower_bound
from eval.analysis.fitting import (
    CriticEstimate,
    MovingAverageDV,
    as_samples,
    fit_critic,
    held_out_split,
    standardise,
)

__all__ = ["ESTIMATORS", "SeparableCritic", "estimate_mutual_information", "mutual_information"]

# The bounds MINE can train and report (names of dim_ssl.estimators.ESTIMATORS).
ESTIMATORS = ("dv", "jsd", "infonce")


def mlp(in_features: int, hidden_dim: int, out_features: int) -> nn.Module:
    """``in -> hidden -> hidden -> out`` with ReLUs, plus a linear shortcut ``in -> out``.

    The shortcut makes ``<f(x), g(y)>`` start near a random bilinear form ``x^T A y``, which
    already sees linear dependence; the hidden layers add what it misses.
    """
    return _Residual(
        nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_features),
        ),
        nn.Linear(in_features, out_features, bias=False),
    )


class _Residual(nn.Module):
    def __init__(self, branch: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x) + self.shortcut(x)


class SeparableCritic(nn.Module):
    """``T(x, y) = <f(x), g(y)> / sqrt(E)``: every pair of a batch from one matrix product.

    Args:
        x_dim, y_dim: sizes of x and y.
        hidden_dim: width of f's and g's hidden layers.
        embed_dim: E, size of the embeddings.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 64, embed_dim: int = 32) -> None:
        super().__init__()
        self.f = mlp(x_dim, hidden_dim, embed_dim)
        self.g = mlp(y_dim, hidden_dim, embed_dim)
        self.scale = embed_dim**-0.5

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Scores ``(N, N)``, ``scores[i, j] = T(x_i, y_j)``: joint pairs on the diagonal (dim_ssl's convention)."""
        return self.f(x) @ (self.g(y) * self.scale).T


def estimate_mutual_information(x: Any, y: Any, estimator: str = "dv", **options: Any) -> float:
    """A MINE-style estimate of I(X; Y) in nats from paired samples, on held-out pairs.

    ``mutual_information(x, y, estimator, **options).value``: see there for the options.

    Examples:
        >>> from eval import estimate_mutual_information
        >>> z = torch.randn(6000, 4)
        >>> estimate_mutual_information(z, 0.8 * z + 0.6 * torch.randn(6000, 4))  # truth 2.04
        1.9...
    """
    return mutual_information(x, y, estimator, **options).value


def mutual_information(
    x: Any,
    y: Any,
    estimator: str = "dv",
    *,
    held_out: float = 0.3,
    hidden_dim: int = 64,
    embed_dim: int = 32,
    batch_size: int = 256,
    lr: float = 3e-3,
    max_epochs: int = 200,
    patience: int = 10,
    ema_rate: float = 0.01,
    max_evaluation_samples: int = 4096,
    seed: int = 0,
) -> CriticEstimate:
    """Trains a separable critic to maximise a ``dim_ssl`` bound on I(X; Y) and reports it on held-out pairs.

    Protocol: the pairs are split at random into a training part and a held-out part (``held_out``
    of them), the held-out part into a validation and a test half. Each variable is standardised
    with the training part's statistics (which changes no MI). The critic is trained with Adam on
    batches of the training part; after every epoch the bound over *all* pairs of the validation
    half is evaluated, and training stops after ``patience`` epochs without a new best, keeping
    the best epoch's weights. The reported value is the bound over all pairs of the test half.
    The defaults need no tuning for a few thousand samples of low-dimensional variables (for
    d = 4, rho = 0.8, 6,000 samples, about 3 s on one CPU thread).

    Args:
        x: ``(N, Dx)`` samples (array or tensor; ``(N,)`` is one column).
        y: ``(N, Dy)`` samples paired with x row by row.
        estimator: the bound to train and report: ``"dv"`` (MINE, with its moving-average
            gradient correction), ``"jsd"`` or ``"infonce"``.
        held_out: fraction of the pairs kept from training (half to validate, half to test).
        hidden_dim, embed_dim: the critic's widths (``SeparableCritic``).
        batch_size: pairs per training batch; its N(N-1) off-diagonal pairs are the negatives.
        lr: Adam's learning rate.
        max_epochs: the most passes over the training part.
        patience: epochs without a better validation bound before stopping.
        ema_rate: DV only: the rate of MINE's moving average of ``mean_neg e^T`` (Belghazi et al.
            use 0.01); 1 turns the correction off (the plain minibatch gradient).
        max_evaluation_samples: the validation and test halves are cut to at most this many
            pairs (their N^2 scores are held at once). InfoNCE's ceiling is the log of the test
            half's size.
        seed: the one source of randomness (split, initial weights, batches).

    Returns:
        A ``CriticEstimate``: ``value`` is the estimate in nats; the rest says how training went.

    Raises:
        ValueError: for an unknown estimator, x and y of different lengths, malformed or
            non-finite samples, too few samples for the split, or bad options.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    corrected = MovingAverageDV(ema_rate)  # DV's gradient correction (checks the rate first)
    evaluation_cap = max_evaluation_samples
    if isinstance(evaluation_cap, bool) or not isinstance(evaluation_cap, int) or evaluation_cap < 8:
        raise ValueError(f"max_evaluation_samples must be an integer >= 8; got {max_evaluation_samples!r}")
    x, y = as_samples(x, "x"), as_samples(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same number of paired samples; got {x.shape[0]} and {y.shape[0]}")

    generator = torch.Generator().manual_seed(seed)
    split = held_out_split(x.shape[0], held_out, generator)
    validation, test = split.validation[:max_evaluation_samples], split.test[:max_evaluation_samples]
    x, y = standardise(x, x[split.train]), standardise(y, y[split.train])
    train_x, train_y = x[split.train], y[split.train]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = SeparableCritic(x.shape[1], y.shape[1], hidden_dim, embed_dim)

    def train_loss(batch: Tensor) -> Tensor:
        scores = critic(train_x[batch], train_y[batch])
        bound = mi_lower_bound(scores, estimator)
        return corrected.loss(scores.diagonal().mean(), bound) if estimator == "dv" else -bound

    def bound_on(indices: Tensor) -> float:
        return mi_lower_bound(critic(x[indices], y[indices]), estimator).item()

    epochs, steps, stopped_early, history, best = fit_critic(
        critic,
        train_loss,
        lambda: bound_on(validation),
        len(split.train),
        generator,
        batch_size=batch_size,
        lr=lr,
        max_epochs=max_epochs,
        patience=patience,
    )
    with torch.no_grad():
        value = bound_on(test)
    return CriticEstimate(
        value=value,
        validation=best,
        epochs=epochs,
        steps=steps,
        stopped_early=stopped_early,
        history=history,
        sizes=(len(split.train), len(validation), len(test)),
    )
