"""Probe accuracy against training time, measured while a method trains.

:class:`ProbeCurve` is a Lightning callback: before the first step, at the end of every N-th
epoch and, when asked, after every S seconds of training it extracts the frozen features of a
small labelled training subset and test set (evaluation transform, model in eval mode) and runs
the kNN probe of :mod:`eval.probes.knn` on them, recording ``(training seconds, accuracy)``.
The same probe on the same images for every method makes the curves of DIM, SimCLR and MoCo
comparable point by point: the x axis is the wall-clock time a method has trained, which is the
fair axis when one method needs one view per image and the others two. Probing by seconds gives
every method points at the same times, also when a budget ends before the first epoch does
(60,000 images and two views per image).

The time it spends probing is taken out of everything: out of the recorded seconds, out of
:attr:`ProbeCurve.train_seconds`, and out of Lightning's wall-clock budget (``max_time``), so a
method trained under a budget of S seconds gets S seconds of training however often it is
probed. Validation (the online monitors) is off the recorded seconds too, as it is off the
budget (:mod:`eval.training.budget`). Its random draws (the DataLoader's seed) happen inside
``torch.random.fork_rng``, so a run with the curve trains exactly as one without.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import Dataset

from eval.probes.features import extract_features
from eval.probes.knn import knn_accuracy
from eval.probes.suite import probe_threads
from eval.training.budget import give_back_time, timers

__all__ = ["ProbeCurve"]


class ProbeCurve(Callback):
    """kNN accuracy of a position's frozen features over training time, and the training clock.

    Args:
        train: Labelled images the kNN memory bank is built from (evaluation transform).
        test: Labelled images whose accuracy is measured.
        position: The feature position (``"pool"``: every method has it).
        every_n_epochs: Probe at the end of every N-th epoch (and before the first step and
            after the last); 0: no probes by epoch.
        every_n_seconds: Also probe after every S seconds of training (checked after every
            batch, so a point lands on the first batch end at or past S, 2S, ...); ``None`` or
            0: not by time. Neither this nor ``every_n_epochs``: no probes, only the clock.
        knn_k, knn_temperature: The kNN vote's settings.
        start_cache: A dict shared by several runs: the accuracy before the first step, keyed
            by a fingerprint of the encoder's weights, so runs that start from the same weights
            (the same seed and encoder) measure it once.

    Attributes:
        points: ``[{"epoch", "step", "seconds", "knn_acc"}, ...]`` in training order; the first
            is the untrained model (0 seconds).
        train_seconds: Training wall-clock (validation and probes excluded), set when
            training ends.
        probe_seconds: Time spent probing.
        validation_seconds: Time spent validating while training.

    Raises:
        ValueError: ``every_n_epochs < 0`` or ``every_n_seconds < 0``.
    """

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        position: str = "pool",
        every_n_epochs: int = 1,
        every_n_seconds: float | None = None,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
        start_cache: dict[str, float] | None = None,
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0; got {every_n_epochs}")
        if every_n_seconds is not None and not every_n_seconds >= 0:
            raise ValueError(f"every_n_seconds must be >= 0 (or None); got {every_n_seconds}")
        self.train, self.test = train, test
        self.position = position
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_seconds = float(every_n_seconds or 0.0)
        self.knn_k, self.knn_temperature = int(knn_k), float(knn_temperature)
        self.start_cache = start_cache
        self.points: list[dict[str, Any]] = []
        self.train_seconds: float | None = None
        self.probe_seconds = 0.0
        self.validation_seconds = 0.0
        self._start: float | None = None
        self._validation_began: float | None = None
        self._next_probe_at = self.every_n_seconds

    @property
    def probes(self) -> bool:
        """Whether it probes at all (by epoch or by time), not only keeps the clock."""
        return bool(self.every_n_epochs or self.every_n_seconds)

    # ---- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.probes and trainer.is_global_zero:
            key = self._fingerprint(pl_module)
            known = None if self.start_cache is None else self.start_cache.get(key)
            self._record(trainer, pl_module, seconds=0.0, epoch=0, accuracy=known)
            if self.start_cache is not None:
                self.start_cache[key] = self.points[-1]["knn_acc"]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.monotonic()
        self.probe_seconds = self.validation_seconds = 0.0
        self._next_probe_at = self.every_n_seconds

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = self.elapsed()
        if not self.every_n_seconds or now < self._next_probe_at:
            return
        while self._next_probe_at <= now:  # one point per crossing, however long the batch
            self._next_probe_at += self.every_n_seconds
        self._probe_now(trainer, pl_module, epoch=trainer.current_epoch)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._validation_began = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._validation_began is not None:
            self.validation_seconds += time.monotonic() - self._validation_began
            self._validation_began = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe_now(trainer, pl_module, epoch=trainer.current_epoch + 1)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_seconds = self.elapsed()
        if self.probes:  # the end state (a no-op when the last epoch's probe saw it)
            self._probe_now(trainer, pl_module, epoch=trainer.current_epoch)

    # ---- measuring --------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training seconds so far, probes and validation excluded."""
        if self._start is None:
            return 0.0
        return time.monotonic() - self._start - self.probe_seconds - self.validation_seconds

    def _probe_now(self, trainer: Any, pl_module: Any, epoch: int) -> None:
        if not trainer.is_global_zero:
            return
        if self.points and self.points[-1]["step"] == trainer.global_step:
            self.points[-1]["epoch"] = max(self.points[-1]["epoch"], int(epoch))  # this step was probed (by time)
            return
        began = time.monotonic()
        self._record(trainer, pl_module, seconds=self.elapsed(), epoch=epoch)
        spent = time.monotonic() - began
        self.probe_seconds += spent
        give_back_time(timers(trainer), spent)

    def _record(self, trainer: Any, pl_module: Any, seconds: float, epoch: int, accuracy: float | None = None) -> None:
        self.points.append(
            {
                "epoch": int(epoch),  # epochs completed
                "step": int(trainer.global_step),
                "seconds": float(seconds),
                "knn_acc": self.accuracy(pl_module) if accuracy is None else float(accuracy),
            }
        )

    def _fingerprint(self, model: Any) -> str:
        """The encoder's weights (every parameter and buffer, summed two ways) and the probe."""
        encoder = getattr(model, "encoder", model)
        with torch.no_grad():
            sums = [
                (float(t.double().sum()), float(t.double().abs().sum()))
                for t in (*encoder.parameters(), *encoder.buffers())
                if t.is_floating_point()
            ]
        return repr((sums, self.position, self.knn_k, self.knn_temperature, len(self.train), len(self.test)))

    def accuracy(self, model: Any) -> float:
        """kNN accuracy of ``model``'s frozen features now (its modes and RNG left as they were)."""

        device = next(model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), probe_threads(len(self.train) + len(self.test)):
            train = extract_features(model, self.train, (self.position,), device=device, progress=False)
            test = extract_features(model, self.test, (self.position,), device=device, progress=False)
            (train_x, train_y), (test_x, test_y) = train[self.position], test[self.position]
            return float(knn_accuracy(train_x, train_y, test_x, test_y, k=self.knn_k, temperature=self.knn_temperature))
