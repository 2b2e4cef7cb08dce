"""The probe curve's clock: time spent probing is not charged to Lightning's wall-clock budget."""

import time

import pytest
from pytorch_lightning.callbacks import Timer

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
