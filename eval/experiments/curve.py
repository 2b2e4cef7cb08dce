"""Probe accuracy against training time, measured while a method trains.

:class:`ProbeCurve` is a Lightning callback: before the first step and at the end of every
N-th epoch it extracts the frozen features of a small labelled training subset and test set
(evaluation transform, model in eval mode) and runs the kNN probe of :mod:`eval.probes.knn` on them,
recording ``(training seconds, accuracy)``. The same probe on the same images for every
method makes the curves of DIM, SimCLR and MoCo comparable point by point: the x axis is the
wall-clock time a method has trained, which is the fair axis when one method needs one view
per image and the others two.

The time it spends probing is taken out of everything: out of the recorded seconds, out of
:attr:`ProbeCurve.train_seconds`, and out of Lightning's wall-clock budget (``max_time``), so
a method trained under a budget of S seconds gets S seconds of training however often it is
probed. Its random draws (the DataLoader's seed) happen inside ``torch.random.fork_rng``, so a
run with the curve trains exactly as one without.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback, Timer
from torch.utils.data import Dataset

from eval.probes.features import extract_features
from eval.probes.knn import knn_accuracy
from eval.probes.suite import probe_threads

__all__ = ["ProbeCurve", "give_back_time"]


class ProbeCurve(Callback):
    """kNN accuracy of a position's frozen features over training time, and the training clock.

    Args:
        train: Labelled images the kNN memory bank is built from (evaluation transform).
        test: Labelled images whose accuracy is measured.
        position: The feature position (``"pool"``: every method has it).
        every_n_epochs: Probe at the end of every N-th epoch (and before the first step and
            after the last); 0: no probes, only the clock.
        knn_k, knn_temperature: The kNN vote's settings.
        start_cache: A dict shared by several runs: the accuracy before the first step, keyed
            by a fingerprint of the encoder's weights, so runs that start from the same weights
            (the same seed and encoder) measure it once.

    Attributes:
        points: ``[{"epoch", "step", "seconds", "knn_acc"}, ...]`` in training order; the first
            is the untrained model (0 seconds).
        train_seconds: Training wall-clock (validation included, probes excluded), set when
            training ends.
        probe_seconds: Time spent probing.

    Raises:
        ValueError: ``every_n_epochs < 0``.
    """

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        position: str = "pool",
        every_n_epochs: int = 1,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
        start_cache: dict[str, float] | None = None,
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0; got {every_n_epochs}")
        self.train, self.test = train, test
        self.position = position
        self.every_n_epochs = int(every_n_epochs)
        self.knn_k, self.knn_temperature = int(knn_k), float(knn_temperature)
        self.start_cache = start_cache
        self.points: list[dict[str, Any]] = []
        self.train_seconds: float | None = None
        self.probe_seconds = 0.0
        self._start: float | None = None

    # ---- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and trainer.is_global_zero:
            key = self._fingerprint(pl_module)
            known = None if self.start_cache is None else self.start_cache.get(key)
            self._record(trainer, pl_module, seconds=0.0, epoch=0, accuracy=known)
            if self.start_cache is not None:
                self.start_cache[key] = self.points[-1]["knn_acc"]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.monotonic()
        self.probe_seconds = 0.0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe_now(trainer, pl_module, epoch=trainer.current_epoch + 1)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.train_seconds = self.elapsed()
        last_step = self.points[-1]["step"] if self.points else None
        if self.every_n_epochs and last_step != trainer.global_step:
            self._probe_now(trainer, pl_module, epoch=trainer.current_epoch)  # stopped mid-epoch by the budget

    # ---- measuring --------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training seconds so far, probes excluded."""
        if self._start is None:
            return 0.0
        return time.monotonic() - self._start - self.probe_seconds

    def _probe_now(self, trainer: Any, pl_module: Any, epoch: int) -> None:
        if not trainer.is_global_zero:
            return
        began = time.monotonic()
        self._record(trainer, pl_module, seconds=self.elapsed(), epoch=epoch)
        spent = time.monotonic() - began
        self.probe_seconds += spent
        give_back_time([c for c in trainer.callbacks if isinstance(c, Timer)], spent)

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


def give_back_time(timers: list[Timer], seconds: float) -> None:
    """Takes ``seconds`` (time spent probing) out of the training time Lightning's Timers count.

    Lightning's budget (``max_time``) counts from its Timer's start, and the Timer has no pause;
    its public checkpoint interface sets the training time counted before the start (what a
    resumed run uses): that time, less ``seconds``, is set here.
    """
    for timer in timers:
        started = timer.start_time("train")
        if started is not None:
            counted_before_start = timer.time_elapsed("train") - (time.monotonic() - started)
            timer.load_state_dict({"time_elapsed": {"train": counted_before_start - seconds}})
