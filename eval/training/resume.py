"""Interrupt and resume a run so that it ends with the same numbers as one that never stopped.

Lightning 2.x restores its loop counters from a mid-epoch checkpoint, but it does not skip the
batches the run had already consumed (a plain DataLoader starts the epoch over) and it does not
restore random states. We make resuming exact with three pieces:

1. **Where to save.** :class:`ExactResume` catches SIGINT and SIGTERM itself and only sets a
   flag. The checkpoint is written at the end of the current training batch (the state Lightning
   itself saves with ``every_n_train_steps``, which its restart logic handles); the run then
   stops at the start of the next batch, after Lightning has logged the finished step. A signal
   during the last batch of an epoch waits for the first batch of the next one, so that the
   epoch's validation and epoch-end logging happen exactly once, before the checkpoint.
2. **What to skip.** The checkpoint records ``(epoch, batches done)``; the resumed run's
   :class:`eval.training.datamodule.EpochSampler` draws the same permutation for that epoch from the
   seed and starts after those batches. Augmentation is seeded per image
   (:class:`eval.training.datamodule.SeededAugmentation`), so the skipped images need no replay.
3. **Random states.** The model's own draws (prior samples, shuffled negatives) come from
   torch's global generators; their states go into the checkpoint as tensors and are restored
   when training restarts. Under DDP every rank is seeded alike and draws alike (same batch
   shapes), so rank 0's states stand for all.

A second signal stops at once, without a checkpoint. :class:`ResumableCSVLogger` keeps the
metrics logged before the checkpoint and appends the rest, so ``metrics.csv`` of a resumed run
reads like one run.
"""

from __future__ import annotations

import csv
import os
import random
import signal
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_info

from eval.training.last_checkpoint import save_atomically

__all__ = [
    "ExactResume",
    "ResumableCSVLogger",
    "TrainingInterrupted",
    "capture_rng_states",
    "restore_rng_states",
]

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint it can be resumed from.

    Attributes:
        signum: The signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        checkpoint: Path of the checkpoint.
        epoch, batch: Where the resumed run continues.
    """

    def __init__(self, signum: int, checkpoint: str, epoch: int, batch: int) -> None:
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at epoch {epoch}, batch {batch}; "
            f"checkpoint saved to {checkpoint}"
        )


# --------------------------------------------------------------------------------------------
# Random states as plain data (torch.load(weights_only=True) reads tensors, lists and numbers)


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python random states, as tensors, lists and numbers."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"])
    )
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# The callback


class ExactResume(Callback):
    """Saves a resumable checkpoint on SIGINT/SIGTERM and makes resuming from it exact.

    Args:
        datamodule: The run's :class:`eval.training.datamodule.PretrainDataModule`; it is told where to
            start when a checkpoint is loaded.
        checkpoint_path: Where the signal checkpoint goes (``checkpoints/last.ckpt``).

    Its state in the checkpoint: ``epoch`` and ``batch`` (where training continues) and ``rng``.
    """

    def __init__(self, datamodule: Any, checkpoint_path: str | os.PathLike) -> None:
        self.datamodule = datamodule
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.position: tuple[int, int] = (0, 0)
        self.received: int | None = None
        self._saved = False
        self._pending_rng: dict[str, Any] | None = None
        self._previous_handlers: dict[int, Any] = {}

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        epoch, batch = self.position
        return {"epoch": epoch, "batch": batch, "rng": capture_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position = (int(state_dict["epoch"]), int(state_dict["batch"]))
        self.datamodule.resume_position = self.position
        self._pending_rng = state_dict.get("rng")

    # ---- hooks --------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint is loaded and the first batch prefetched, before any training:
        # the stream continues where the interrupted run left it.
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        self._install_handlers()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._saved:
            assert self.received is not None
            epoch, done = self.position
            raise TrainingInterrupted(self.received, self.checkpoint_path, epoch, done)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.position = (trainer.current_epoch, batch_idx + 1)
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if not self._stop_requested(trainer, pl_module) or last_of_epoch or trainer.should_stop:
            return
        save_atomically(trainer, self.checkpoint_path)  # all ranks take part; rank 0 writes
        self._saved = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before ModelCheckpoint's epoch-end save: that checkpoint resumes at the next epoch.
        self.position = (trainer.current_epoch + 1, 0)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ---- signals ------------------------------------------------------------------------

    def _stop_requested(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        flag = self.received is not None
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # A SIGTERM may reach rank 0 only: all ranks must stop after the same batch.
            tensor = torch.tensor([int(flag)], device=pl_module.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            flag = bool(tensor.item())
            if flag and self.received is None:
                self.received = signal.SIGTERM
        return flag

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            # Second signal: the user does not want to wait. Default behaviour from here on.
            self._restore_handlers()
            signal.raise_signal(signum)
            return
        self.received = signum
        rank_zero_info(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
            "(send it again to stop at once, without one)"
        )

    def _install_handlers(self) -> None:
        # Installed at on_train_start, after Lightning's own SIGTERM handler (which would stop
        # after validation without a resumable checkpoint), and only in the main thread.
        if self._previous_handlers:
            return
        try:
            for signum in HANDLED_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous_handlers = {}


# --------------------------------------------------------------------------------------------
# Metrics CSV that survives a resume


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, but on resume it keeps the rows logged before the checkpoint
    (steps below ``keep_below_step``) instead of deleting the file."""

    def __init__(self, log_dir: str, keep_below_step: int | None) -> None:
        self._keep_below_step = keep_below_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self._keep_below_step is None:
            os.remove(path)  # a fresh run in an old folder (--overwrite)
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            keys = list(reader.fieldnames or [])
            # Rows at or past the checkpoint's step came after it: the resumed run redoes them.
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) < self._keep_below_step]
        self.metrics_keys = sorted(keys)  # the writer keeps its header sorted
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``metrics.csv`` straight into ``save_dir``, resumable.

    Args:
        save_dir: The run's output folder.
        keep_below_step: On resume, the checkpoint's global step: earlier rows are kept, the
            new ones appended. ``None``: start a new file.
    """

    def __init__(self, save_dir: str | os.PathLike, keep_below_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, name="", version="", **kwargs)
        self._keep_below_step = keep_below_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self._keep_below_step)
        return self._experiment
