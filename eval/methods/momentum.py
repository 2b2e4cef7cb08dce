"""Momentum targets (MoCo's key encoder, BYOL's target network): a frozen copy moved by EMA.

Both come from lightly: ``deactivate_requires_grad`` freezes the copy, ``update_momentum``
moves it, ``cosine_schedule`` takes the momentum from its start to its end value over the run.
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from eval.methods.base import MethodModule

__all__ = ["momentum_copy", "scheduled_momentum"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module``, to be updated by exponential moving average only."""
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


def scheduled_momentum(method: MethodModule, start: float, end: float | None) -> float:
    """The momentum at this step: ``start`` when ``end`` is None or no Trainer runs the method
    (a step by hand), else lightly's cosine schedule from ``start`` to ``end`` over the run."""
    trainer: pl.Trainer | None = method._trainer
    if end is None or trainer is None:
        return start
    return cosine_schedule(method.global_step, method.total_steps(), start, end)
