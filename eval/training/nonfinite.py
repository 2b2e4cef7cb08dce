"""Steps whose loss or gradients are not finite are skipped, not applied; too many in a row stop the run.

One bad batch (a NaN pixel, an overflow in a bound) would otherwise write NaN into every weight
through the optimizer step, and into BatchNorm's running statistics through the forward pass,
and the run would carry on training a dead model. A batch whose images hold NaN or inf is not
even run: :class:`eval.methods.MethodModule`'s training step returns ``None`` for it (Lightning
then skips backward and the step), on every rank alike. :class:`SkipNonFiniteSteps` counts those,
and checks the gradients before each optimizer step (a NaN or inf loss gives non-finite gradients too): if any
is not finite, it drops all gradients, so the optimizer leaves every parameter and its state
as they were, and restores the buffers (BatchNorm's running mean and variance) to their values
before the batch. A warning counts the skipped steps. After ``max_in_a_row`` consecutive
skips the run stops with a :class:`eval.errors.RunError` that says what to try: a run that
produces nothing but NaN is diverging, and skipping forever would hide it.

Under DDP the gradients are all-reduced before the check, so every rank makes the same
decision. The check costs one fused norm over the gradients per step.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from eval.errors import RunError

__all__ = ["SkipNonFiniteSteps"]


class SkipNonFiniteSteps(Callback):
    """Skips optimizer steps with non-finite gradients; stops after ``max_in_a_row`` of them.

    Args:
        max_in_a_row: Consecutive skipped steps that stop the run (``RunError``).

    Attributes:
        skipped: Steps skipped so far in this process.
        in_a_row: The current run of consecutive skipped steps.
    """

    def __init__(self, max_in_a_row: int = 10) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1; got {max_in_a_row}")
        self.max_in_a_row = int(max_in_a_row)
        self.skipped = 0
        self.in_a_row = 0
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._skipped_this_batch = False
        self._step = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The forward pass updates BatchNorm's running statistics: keep them to undo a bad batch.
        self._buffers = [(b, b.detach().clone()) for b in pl_module.buffers() if b.is_floating_point()]
        self._skipped_this_batch = False
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # A method's training_step returns None for a batch with NaN or inf in its images
        # (eval.methods.MethodModule): Lightning then skips backward and the optimizer step.
        if not outputs and not self._skipped_this_batch:  # None, or {} (Lightning's empty result)
            self._skip(trainer, "NaN or infinite values in the input images")

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not gradients:  # the training step returned None (non-finite inputs): counted at batch end
            return
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(gradients))).all()):
            self.in_a_row = 0
            return
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves every parameter alone
        with torch.no_grad():
            for buffer, saved in self._buffers:
                buffer.copy_(saved)
        self._skip(trainer, "a NaN or infinite loss or gradient")

    def _skip(self, trainer: pl.Trainer, cause: str) -> None:
        self._skipped_this_batch = True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise RunError(
                f"{self.in_a_row} training steps in a row skipped for non-finite values (the last: {cause}, "
                f"at step {self._step}); the run is diverging or the data holds NaN. Lower "
                "optimizer.lr, set trainer.gradient_clip_val, or check the input data; "
                "trainer.max_nonfinite_steps sets how many are skipped before stopping"
            )
        rank_zero_warn(
            f"step {self._step}: {cause}, step skipped (weights and BatchNorm statistics "
            f"unchanged); {self.skipped} skipped so far, {self.in_a_row} in a row"
        )
