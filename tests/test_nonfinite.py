"""A batch that makes the loss NaN is skipped: no NaN reaches the weights or BatchNorm; too many stop the run."""

from __future__ import annotations

import math

import pytest
import torch
from pretrain_helpers import QUICKSTART
from pytorch_lightning.callbacks import Callback

from eval.errors import RunError
from eval.training.config import resolve_config
from eval.training.pretrain import pretrain

RUN = [
    "encoder.name=test_resnet",
    "data.limit_train=64",
    "data.batch_size=16",
    "data.limit_val=48",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


class PoisonBatches(Callback):
    """Fills the images of the given training steps with NaN; records the model state around them."""

    def __init__(self, steps) -> None:
        self.steps = set(steps)
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.states[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if trainer.global_step in self.steps:
            images = batch[0]
            (images[0] if isinstance(images, (list, tuple)) else images).fill_(math.nan)


def _run(tmp_path, poison, *extra):
    config = resolve_config(QUICKSTART, [*RUN, *extra, f"output_dir={tmp_path / 'run'}"])
    return pretrain(config, callbacks=[poison], echo=lambda m: None)


def test_a_nan_batch_is_skipped_and_changes_nothing(tmp_path):
    poison = PoisonBatches(steps=[2])
    with pytest.warns(UserWarning, match="step 2: NaN or infinite values in the input images, step skipped"):
        summary = _run(tmp_path, poison)
    before, after = poison.states[2], poison.states[3]
    # Every parameter, optimizer-visible or not, and BatchNorm's running statistics: as before the
    # NaN batch (num_batches_tracked counts batches and is not restored: it is an integer).
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed == []
    # The steps around it trained, and the run ended with finite numbers.
    assert any(not torch.equal(poison.states[1][k], poison.states[2][k]) for k in before)
    assert summary["steps"] == 8 and math.isfinite(summary["final_loss"])
    assert all(torch.isfinite(v).all() for v in poison.states[7].values() if v.is_floating_point())


def test_nan_batches_in_a_row_stop_the_run_with_a_clear_error(tmp_path):
    poison = PoisonBatches(steps=range(100))
    with (
        pytest.raises(RunError, match="3 training steps in a row skipped for non-finite values"),
        pytest.warns(UserWarning),
    ):
        _run(tmp_path, poison, "trainer.max_nonfinite_steps=3")


class InfiniteLoss(Callback):
    """Makes the gradients of one step infinite, as an overflow in a bound would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.states[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(pl_module.encoder.parameters()).grad[0].fill_(math.inf)


def test_a_step_with_infinite_gradients_is_skipped(tmp_path):
    spy = InfiniteLoss(step=3)
    with pytest.warns(UserWarning, match="step 3: a NaN or infinite loss or gradient, step skipped"):
        summary = _run(tmp_path, spy)
    before, after = spy.states[3], spy.states[4]
    # The parameters as before the step (the forward pass's BatchNorm statistics are restored too);
    # only the epoch's running means of the logged terms saw the step.
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("epoch_means.") for k in changed), changed
    assert summary["steps"] == 8 and math.isfinite(summary["final_loss"])
