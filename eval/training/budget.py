"""The wall-clock budget counts training only: validation and its monitors run off the clock.

Lightning's budget (``trainer.max_time_s``, its ``max_time``) counts from its Timer's start,
validation included. The online classifier's and the kNN monitor's pass over the held-out
split is measurement, not training, and its cost differs between methods (a wider feature, a
slower encoder), so under a shared budget it would take training time away from some methods
more than others. :class:`MonitorsOffTheClock` gives the time of every validation run back to
the Timer, so a run with a budget of S seconds trains for S seconds however often it is
monitored. :func:`give_back_time` is the one way of doing that (the probe curve uses it too).
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer

__all__ = ["MonitorsOffTheClock", "give_back_time", "timers"]


def timers(trainer: pl.Trainer) -> list[Timer]:
    """The trainer's Timers (Lightning adds one for ``max_time``)."""
    return [c for c in trainer.callbacks if isinstance(c, Timer)]


def give_back_time(timers: list[Timer], seconds: float) -> None:
    """Takes ``seconds`` out of the training time Lightning's Timers (``max_time``) count.

    The Timer has no pause; its public checkpoint interface sets the training time counted
    before its start (what a resumed run uses): that time, less ``seconds``, is set here. A
    Timer that has not started (the sanity check runs before training starts) is left alone.
    """
    for timer in timers:
        started = timer.start_time("train")
        if started is not None:
            counted_before_start = timer.time_elapsed("train") - (time.monotonic() - started)
            timer.load_state_dict({"time_elapsed": {"train": counted_before_start - seconds}})


class MonitorsOffTheClock(Callback):
    """Gives the time of every validation run while fitting back to the wall-clock budget.

    Attributes:
        validation_seconds: Time spent validating while training (the sanity check excluded).
    """

    def __init__(self) -> None:
        self.validation_seconds = 0.0
        self._began: float | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._began = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._began is None:
            return
        spent = time.monotonic() - self._began
        self._began = None
        self.validation_seconds += spent
        give_back_time(timers(trainer), spent)

    def state_dict(self) -> dict[str, Any]:
        return {"validation_seconds": self.validation_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_seconds = float(state_dict.get("validation_seconds", 0.0))
