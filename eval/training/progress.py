"""Throughput of training and a progress bar that shows it next to the loss.

Throughput is measured, not logged to ``metrics.csv``: timings differ from run to run, and the
metrics of two runs with the same seed should be the same file.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

__all__ = ["ProgressBar", "ThroughputMeter"]


class ThroughputMeter(Callback):
    """Images per second of training (data loading included, validation excluded).

    Counts the images of every rank. Its totals are saved in checkpoints, so a resumed run
    reports the throughput and wall-clock time of the whole run.

    Attributes:
        images: Training images processed (all ranks).
        train_time_s: Seconds spent in training batches, loading included.
        recent: Images/s over the last few batches (for the progress bar).
    """

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self.images = 0
        self.train_time_s = 0.0
        self.previous_wall_s = 0.0
        self.recent: float | None = None
        self._last: float | None = None
        self._started = time.monotonic()

    @property
    def images_per_s(self) -> float:
        return self.images / self.train_time_s if self.train_time_s > 0 else float("nan")

    @property
    def wall_clock_s(self) -> float:
        """Seconds since this process started fitting, plus those of earlier (resumed) segments."""
        return self.previous_wall_s + time.monotonic() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "train_time_s": self.train_time_s, "wall_clock_s": self.wall_clock_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict["images"])
        self.train_time_s = float(state_dict["train_time_s"])
        self.previous_wall_s = float(state_dict["wall_clock_s"])

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()  # a resumed run starts mid-epoch, without epoch start

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last = now
            return
        elapsed, self._last = now - self._last, now
        images = _batch_size(batch) * trainer.world_size
        self.images += images
        self.train_time_s += elapsed
        if elapsed > 0:
            rate = images / elapsed
            self.recent = rate if self.recent is None else self.smoothing * self.recent + (1 - self.smoothing) * rate


def _batch_size(batch: Any) -> int:
    images = batch[0]
    if isinstance(images, (list, tuple)):  # two-view methods: count images, not views
        images = images[0]
    return int(images.shape[0])


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the throughput (``img/s``) beside the logged metrics."""

    def __init__(self, meter: ThroughputMeter, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.meter = meter

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = dict(super().get_metrics(trainer, pl_module))
        items.pop("v_num", None)
        if self.meter.recent is not None:
            items["img/s"] = f"{self.meter.recent:.0f}"
        return items
