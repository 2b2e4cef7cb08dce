"""The wall-clock budget counts training: validation (the online monitors) runs off the clock."""

import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eval.training.budget import MonitorsOffTheClock

STEP_S, VALIDATION_S, BUDGET_S = 0.05, 0.6, 1.5


class SlowToValidate(pl.LightningModule):
    """Training steps of 50 ms, validation of 600 ms after every 5 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(VALIDATION_S)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def steps_within_budget(callbacks) -> int:
    loader = DataLoader(TensorDataset(torch.zeros(5, 2)), batch_size=1)
    trainer = pl.Trainer(
        max_time={"seconds": BUDGET_S},
        max_epochs=1000,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(SlowToValidate(), loader, DataLoader(TensorDataset(torch.zeros(1, 2)), batch_size=1))
    return trainer.global_step


def test_validation_time_is_given_back_to_the_budget():
    off_the_clock = MonitorsOffTheClock()
    with_refund = steps_within_budget([off_the_clock])
    without = steps_within_budget([])
    # 1.5 s of 50 ms steps is 30 steps when validation is off the clock; with it on the clock,
    # every 5 steps (0.25 s) cost 0.85 s, and the budget ends after about 10.
    assert with_refund >= 24, with_refund
    assert without <= 15, without
    epochs = with_refund // 5
    assert off_the_clock.validation_seconds >= 0.9 * VALIDATION_S * epochs
