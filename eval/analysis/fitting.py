"""What the MINE estimate and the neural dependency measure share: their inputs, the held-out
split, and a critic trained with early stopping on a held-out bound.

Both train a small network (a critic) to maximise a lower bound of ``dim_ssl`` on one part of
the samples and report the bound on samples it never saw: a critic that memorises its training
pairs would otherwise report an inflated number. The held-out part is split in two: the
*validation* half decides when to stop (and which weights to keep), the *test* half gives the
reported number, so that the choice of the stopping point does not inflate it either.

Everything random (the split, the initial weights, the batches, the shuffles) comes from one
seed, so a call is deterministic for a seed on a given machine and thread count.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CriticEstimate",
    "HeldOutSplit",
    "MovingAverageDV",
    "as_samples",
    "fit_critic",
    "held_out_split",
    "standardise",
]


@dataclass(frozen=True)
class CriticEstimate:
    """Outcome of a critic-based estimate.

    Attributes:
        value: The reported number in nats (the bound on the test half of the held-out part).
        validation: The best bound on the validation half, the one early stopping kept.
        epochs: Epochs trained (passes over the training part).
        steps: Optimizer steps.
        stopped_early: Whether training stopped because the validation bound stopped rising
            (False: it ran ``max_epochs``).
        history: The validation bound after each epoch.
        sizes: Samples in the training, validation and test parts.
    """

    value: float
    validation: float
    epochs: int
    steps: int
    stopped_early: bool
    history: list[float] = field(default_factory=list)
    sizes: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class HeldOutSplit:
    """Indices of the training part and of the two held-out halves (validation, test)."""

    train: Tensor
    validation: Tensor
    test: Tensor


class MovingAverageDV:
    """MINE's bias-corrected gradient of the Donsker-Varadhan bound (Belghazi et al., section 3.2).

    The gradient of ``log mean_neg e^T`` is ``grad(mean_neg e^T) / mean_neg e^T``; over a
    minibatch the denominator makes it biased, and MINE divides by a moving average of
    ``mean_neg e^T`` instead. ``loss(positive_mean, bound)`` returns a surrogate with exactly that
    gradient: ``-(mean_pos T - exp(log mean_neg e^T - log average))``, the exponential's value
    near 1, its gradient ``grad(mean_neg e^T) / average``. The average is kept in the log domain
    (scores of a few hundred would overflow ``e^T``).

    Args:
        rate: weight of the newest batch in the average (MINE: 0.01); 1 gives the plain
            minibatch gradient.
    """

    def __init__(self, rate: float = 0.01) -> None:
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 < rate <= 1.0:
            raise ValueError(f"ema_rate must be a number in (0, 1]; got {rate!r}")
        self.rate = float(rate)
        self.log_average: Tensor | None = None

    def loss(self, positive_mean: Tensor, bound: Tensor) -> Tensor:
        """The surrogate loss from a batch's DV ``bound`` and the mean of its positive scores."""
        if self.rate == 1.0:
            return -bound
        log_mean_negative = positive_mean - bound  # DV = mean_pos T - log mean_neg e^T
        current = log_mean_negative.detach()
        if self.log_average is None:
            self.log_average = current
        else:
            self.log_average = torch.logaddexp(self.log_average + math.log1p(-self.rate), current + math.log(self.rate))
        return -(positive_mean - torch.exp(log_mean_negative - self.log_average))


def as_samples(values: Any, name: str) -> Tensor:
    """``values`` (array or tensor, ``(N,)`` or ``(N, D)``) as a float32 ``(N, D)`` CPU tensor.

    Raises:
        ValueError: for more than two dimensions, no columns, non-numeric or non-finite values.
    """
    if isinstance(values, Tensor):
        tensor = values.detach().cpu()
    else:
        array = np.asarray(values)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ValueError(f"{name} must be numeric (an array or tensor of shape (N, D)); got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 2 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N,) or (N, D) with D >= 1; got {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf")
    return tensor


def held_out_split(n: int, held_out: float, generator: torch.Generator, minimum: int = 8) -> HeldOutSplit:
    """A random split of ``n`` samples: ``held_out`` of them held out, half for validation, half for test.

    Raises:
        ValueError: for ``held_out`` outside (0, 1), or a part with fewer than ``minimum`` samples.
    """
    if not isinstance(held_out, (int, float)) or isinstance(held_out, bool) or not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1); got {held_out!r}")
    order = torch.randperm(n, generator=generator)
    held = int(round(n * held_out))
    validation = held // 2
    parts = (order[held:], order[:validation], order[validation:held])
    if min(len(part) for part in parts) < minimum:
        raise ValueError(
            f"{n} samples are too few: held_out={held_out} leaves {len(parts[0])} to train on and "
            f"{len(parts[1])} and {len(parts[2])} to validate and test on; each needs at least {minimum}"
        )
    return HeldOutSplit(*parts)


def standardise(samples: Tensor, reference: Tensor) -> Tensor:
    """``samples`` with the mean and standard deviation of ``reference`` (the training part) taken out,
    column by column. Constant columns become 0. An invertible map of each variable, so it changes
    no mutual information; it spares the critic a learning rate that depends on the data's scale."""
    mean = reference.mean(dim=0)
    std = reference.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (samples - mean) / std


def fit_critic(
    critic: nn.Module,
    train_loss: Callable[[Tensor], Tensor],
    validation_bound: Callable[[], float],
    num_train: int,
    generator: torch.Generator,
    batch_size: int = 256,
    lr: float = 3e-3,
    max_epochs: int = 200,
    patience: int = 10,
) -> tuple[int, int, bool, list[float], float]:
    """Trains ``critic`` with Adam, one epoch at a time, and keeps the weights of its best epoch.

    After every epoch ``validation_bound()`` is evaluated (without gradients, the critic in eval
    mode); training stops after ``patience`` epochs without a new best, and the critic is left
    with the weights of the best epoch.

    Args:
        critic: the network to train (its parameters are what Adam moves).
        train_loss: the loss of one batch, given the batch's indices into the training part.
        validation_bound: the bound on the validation half with the current weights (nats).
        num_train: samples in the training part; batches are a fresh permutation every epoch,
            the last one dropped when it holds fewer than two samples (no in-batch negatives).
        generator: the source of the batches' order.
        batch_size: samples per batch (at most ``num_train``).
        lr: Adam's learning rate.
        max_epochs: the most epochs.
        patience: epochs without a better validation bound before stopping.

    Returns:
        ``(epochs, steps, stopped_early, history, best)``: epochs run, optimizer steps, whether
        patience ran out, the validation bound per epoch, and the best of them.

    Raises:
        ValueError: for a batch size below 2, a learning rate that is not positive, or fewer than
            one epoch or of patience.
    """
    for name, value, least in (("batch_size", batch_size, 2), ("max_epochs", max_epochs, 1), ("patience", patience, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")
    batch_size = min(int(batch_size), num_train)
    # fused: one kernel for all parameters, where small critics spend most of a step on overhead.
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr, fused=True)
    best, best_state, history = -math.inf, copy.deepcopy(critic.state_dict()), []
    steps = waited = 0
    stopped_early = False
    for _ in range(max_epochs):
        critic.train()
        for batch in torch.randperm(num_train, generator=generator).split(batch_size):
            if len(batch) < 2:
                continue
            loss = train_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        critic.eval()
        with torch.no_grad():
            value = float(validation_bound())
        history.append(value)
        if value > best:
            best, best_state, waited = value, copy.deepcopy(critic.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                stopped_early = True
                break
    critic.load_state_dict(best_state)
    critic.eval()
    return len(history), steps, stopped_early, history, best
