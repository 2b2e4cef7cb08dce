"""``checkpoints/last.ckpt`` that survives any kill: every epoch end, every few minutes, atomically.

A run loses at most the work since its last checkpoint, whatever stops it: SIGINT and SIGTERM
are caught (:class:`eval.training.resume.ExactResume` saves after the current step), but SIGKILL,
the OOM killer and a preempted machine are not. So :class:`LastCheckpoint` also writes
``last.ckpt`` at the end of every epoch and, inside long epochs, every ``every_n_steps`` steps or
``every_minutes`` minutes of training, whichever comes first. A mid-epoch checkpoint is the
state a signal would save (the end of a training step), so ``--resume`` continues from it
exactly, with the batches, random states and metrics of a run that was never stopped.

Every write is atomic (:func:`save_atomically`): the checkpoint goes to a temporary file in the
same folder, then ``os.replace`` puts it in place, so a kill during the write leaves the
previous ``last.ckpt`` whole.

It is a ``ModelCheckpoint`` so that Lightning orders it as one: its epoch-end save runs after the
LightningModule's ``on_train_epoch_end`` (epoch metrics logged and reset), like any checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint", "save_atomically"]


def save_atomically(trainer: pl.Trainer, path: str | os.PathLike) -> None:
    """``trainer.save_checkpoint(path)``, written to a temporary file first and renamed into place.

    Every rank takes part (Lightning gathers sharded state); rank 0 writes and renames. The
    temporary file sits in the same folder, so the rename is atomic (one file system).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    trainer.save_checkpoint(temporary, weights_only=False)
    if trainer.is_global_zero:
        os.replace(temporary, path)
    trainer.strategy.barrier("dim_ssl.save_atomically")


class LastCheckpoint(ModelCheckpoint):
    """Writes ``dirpath/last.ckpt`` at every epoch end and every N steps or minutes in between.

    Args:
        dirpath: The run's checkpoint folder.
        every_n_steps: Also save after every N-th optimizer step (``None``: not by steps).
        every_minutes: Also save when this many minutes have passed since the last save
            (``None``: not by time). The default bounds what a kill can lose in a long epoch.

    Attributes:
        path: ``dirpath/last.ckpt``.
        saves: Checkpoints written by this run (epoch ends and mid-epoch).
    """

    def __init__(
        self, dirpath: str | os.PathLike, every_n_steps: int | None = None, every_minutes: float | None = 10.0
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(
                f"checkpoint_every_n_steps must be a positive number of steps or null; got {every_n_steps}"
            )
        if every_minutes is not None and not every_minutes > 0:
            raise ValueError(f"checkpoint_every_minutes must be positive or null; got {every_minutes}")
        # Lightning's own saving is switched off (no top-k, no last): this class writes itself.
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=False, save_on_train_epoch_end=True)
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self.every_seconds = None if every_minutes is None else float(every_minutes) * 60.0
        self.saves = 0
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The last batch of an epoch is saved at the epoch's end (after validation); a step that
        # ends the run (budget) is saved there too.
        if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
            return
        if self._due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # saved at the epoch end, not after validation

    def _due(self, trainer: pl.Trainer) -> bool:
        by_steps = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        by_time = self.every_seconds is not None and time.monotonic() - self._saved_at >= self.every_seconds
        if self.every_seconds is not None and trainer.world_size > 1:
            by_time = bool(trainer.strategy.broadcast(by_time, src=0))  # clocks differ: rank 0 decides
        return by_steps or by_time

    def _save(self, trainer: pl.Trainer) -> None:
        save_atomically(trainer, self.path)
        self.saves += 1
        self._saved_at = time.monotonic()
