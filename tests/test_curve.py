"""The probe curve's clock: time spent probing is not charged to Lightning's wall-clock budget."""

import time

import pytest
from pytorch_lightning.callbacks import Timer
from torch import nn

from eval.training.budget import give_back_time


def test_probe_time_is_given_back_to_lightnings_timer():
    timer = Timer(duration={"seconds": 60})
    timer.on_train_start(trainer=None, pl_module=None)  # what Lightning calls when training starts
    time.sleep(0.2)
    before = timer.time_elapsed("train")
    give_back_time([timer], 5.0)
    after = timer.time_elapsed("train")
    assert before == pytest.approx(0.2, abs=0.15)
    assert after == pytest.approx(before - 5.0, abs=0.05)
    time.sleep(0.1)  # the clock keeps running from the reduced value
    assert timer.time_elapsed("train") == pytest.approx(before - 5.0 + 0.1, abs=0.08)


def test_a_timer_that_has_not_started_is_left_alone():
    timer = Timer(duration={"seconds": 60})
    give_back_time([timer], 5.0)
    assert timer.time_elapsed("train") == 0


class _FakeTrainer:
    """What ProbeCurve reads of a Trainer: the step, the epoch, rank zero and the callbacks."""

    is_global_zero = True
    callbacks: list = []

    def __init__(self) -> None:
        self.global_step = 0
        self.current_epoch = 0


@pytest.fixture
def clocked_curve(monkeypatch):
    """A ProbeCurve on a hand-moved clock whose probes take 2 seconds and score 0.1, 0.2, ..."""
    import eval.experiments.curve as curve_module

    clock = {"now": 100.0}
    monkeypatch.setattr(curve_module.time, "monotonic", lambda: clock["now"])
    scores = iter(i / 10 for i in range(1, 100))

    def probe(self, model):
        clock["now"] += 2.0  # the probe's own time: taken off the training seconds
        return next(scores)

    monkeypatch.setattr(curve_module.ProbeCurve, "accuracy", probe)
    return clock, curve_module.ProbeCurve


def test_the_curve_probes_by_training_time_once_per_crossing(clocked_curve):
    clock, ProbeCurve = clocked_curve
    curve = ProbeCurve(train=[], test=[], every_n_epochs=0, every_n_seconds=10)
    trainer, model = _FakeTrainer(), nn.Linear(1, 1)
    curve.on_fit_start(trainer, model)  # the untrained point (its probe is before the clock starts)
    clock["now"] = 100.0
    curve.on_train_start(trainer, model)
    # batches ending at these training seconds (the clock only counts training: probes take 2 s)
    for step, seconds in enumerate([3, 9, 11, 12, 25, 27, 31], start=1):
        clock["now"] = 100.0 + seconds + curve.probe_seconds
        trainer.global_step = step
        curve.on_train_batch_end(trainer, model, None, None, step - 1)
    curve.on_train_end(trainer, model)
    # 11 crosses 10; 25 crosses 20 (one point, and 27 none: the next is 30); 31 crosses 30; the
    # end is step 7 again
    assert [(p["step"], p["seconds"]) for p in curve.points] == [(0, 0.0), (3, 11.0), (5, 25.0), (7, 31.0)]
    assert [p["knn_acc"] for p in curve.points] == [0.1, 0.2, 0.3, 0.4]
    assert curve.train_seconds == 31.0
    assert curve.probe_seconds == 6.0  # three probes while training, two seconds each


def test_an_epoch_end_at_a_step_probed_by_time_is_not_probed_again(clocked_curve):
    clock, ProbeCurve = clocked_curve
    curve = ProbeCurve(train=[], test=[], every_n_epochs=1, every_n_seconds=5)
    trainer, model = _FakeTrainer(), nn.Linear(1, 1)
    curve.on_fit_start(trainer, model)
    clock["now"] = 100.0
    curve.on_train_start(trainer, model)
    clock["now"] = 106.0
    trainer.global_step = 4
    curve.on_train_batch_end(trainer, model, None, None, 3)  # 6 s: a point by time, epoch 0 running
    curve.on_train_epoch_end(trainer, model)  # that batch ended epoch 1: the same weights
    trainer.current_epoch = 1
    curve.on_train_end(trainer, model)
    assert [(p["epoch"], p["step"]) for p in curve.points] == [(0, 0), (1, 4)]
    assert curve.probe_seconds == 2.0


def test_the_curve_refuses_a_negative_period():
    from eval.experiments.curve import ProbeCurve

    with pytest.raises(ValueError, match="every_n_seconds must be >= 0"):
        ProbeCurve(train=[], test=[], every_n_seconds=-1)
