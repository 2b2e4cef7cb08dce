"""Interrupted runs resume to the same numbers, wherever the signal lands (in-process, real signals)."""

from __future__ import annotations

import os
import signal

import pytest
from pretrain_helpers import QUICKSTART, fresh, read_metrics
from pytorch_lightning.callbacks import Callback

from eval.training.config import resolve_config
from eval.training.pretrain import TrainingInterrupted, pretrain

# 4 batches an epoch, 3 epochs; negatives drawn from the RNG, so its state must resume too.
RUN = [
    "encoder.name=test_resnet",
    "data.limit_train=64",
    "data.batch_size=16",
    "data.limit_val=48",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "method.head.negatives=shuffle",
]
SUMMARY_KEYS = ("final_loss", "online_acc", "knn_acc", "epochs", "steps")


class SignalAt(Callback):
    """Sends ``signum`` to this very process when training (or validation) reaches a batch."""

    def __init__(self, signum: int, epoch: int, batch: int, during: str = "train") -> None:
        self.signum, self.epoch, self.batch, self.during, self.sent = signum, epoch, batch, during, False

    def _maybe_send(self, trainer, batch_idx: int) -> None:
        if not self.sent and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.during == "train":
            self._maybe_send(trainer, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.during == "validation" and trainer.training is False and trainer.state.fn == "fit":
            self._maybe_send(trainer, batch_idx)


def _config(folder, *extra):
    return resolve_config(QUICKSTART, [*RUN, *extra, f"output_dir={folder}"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    return pretrain(_config(folder), echo=lambda m: None), read_metrics(folder)


@pytest.mark.parametrize(
    "signum, epoch, batch, during, stops_at",
    [
        (signal.SIGTERM, 1, 1, "train", (1, 2)),  # mid-epoch: saved after the batch it arrived in
        (signal.SIGTERM, 0, 3, "train", (1, 1)),  # last batch: waits for the epoch's validation
        (signal.SIGTERM, 1, 0, "validation", (2, 1)),  # during validation: after the next batch
        (signal.SIGINT, 2, 2, "train", (2, 3)),  # Ctrl+C behaves the same
    ],
    ids=["mid_epoch", "last_batch", "validation", "sigint"],
)
def test_an_interrupted_run_resumes_to_the_same_numbers(reference, tmp_path, signum, epoch, batch, during, stops_at):
    expected_summary, expected_metrics = reference
    folder = fresh(tmp_path / "run")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as info:
        pretrain(_config(folder), callbacks=[SignalAt(signum, epoch, batch, during)], echo=lambda m: None)
    assert (info.value.signum, (info.value.epoch, info.value.batch)) == (signum, stops_at)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # ours are gone again
    assert not (folder / "summary.json").exists()

    summary = pretrain(_config(folder), resume=True, echo=lambda m: None)
    for key in SUMMARY_KEYS:
        assert summary[key] == pytest.approx(expected_summary[key], rel=1e-6, abs=1e-7), key
    assert read_metrics(folder) == expected_metrics


def test_a_finished_run_continues_to_more_epochs_as_if_it_had_never_stopped(reference, tmp_path):
    expected_summary, expected_metrics = reference
    folder = fresh(tmp_path / "run")
    pretrain(_config(folder, "trainer.max_epochs=2"), echo=lambda m: None)
    summary = pretrain(_config(folder), resume=True, echo=lambda m: None)  # max_epochs back to 3
    for key in SUMMARY_KEYS:
        assert summary[key] == pytest.approx(expected_summary[key], rel=1e-6, abs=1e-7), key
    # The first run's final evaluation (at its last step) is dropped; everything else matches.
    assert read_metrics(folder) == expected_metrics


def test_same_seed_same_numbers_and_another_seed_other_numbers(reference, tmp_path):
    expected_summary, _ = reference
    again = pretrain(_config(fresh(tmp_path / "again"), "trainer.max_epochs=1"), echo=lambda m: None)
    other = pretrain(_config(fresh(tmp_path / "other"), "trainer.max_epochs=1", "seed=1"), echo=lambda m: None)
    first = pretrain(_config(fresh(tmp_path / "first"), "trainer.max_epochs=1"), echo=lambda m: None)
    assert again["final_loss"] == first["final_loss"]
    assert other["final_loss"] != first["final_loss"]


def test_signal_handlers_are_as_before_after_a_run(tmp_path):
    # compare, sweep and transfer run several trainings in one process: a SIGTERM between two of
    # them must stop the process, not meet a handler the previous trainer left behind.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    pretrain(_config(tmp_path / "run", "trainer.max_epochs=1"), echo=lambda m: None)
    assert {s: signal.getsignal(s) for s in before} == before
