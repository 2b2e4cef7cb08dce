"""BYOL from lightly's parts, on the same backbone as DIM.

BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020 (https://arxiv.org/abs/2006.07733). An online network (encoder, projection head,
prediction head) predicts the projection of the other view made by a target network, a
momentum copy of the online encoder and projection head; no negatives. The loss is the
negative cosine similarity, symmetrised over the two views.

Everything method-specific comes from lightly: ``BYOLProjectionHead``, ``BYOLPredictionHead``,
``NegativeCosineSimilarity``, ``update_momentum``, ``cosine_schedule``. The recipe is
lightly's CIFAR-10 benchmark (docs/source/getting_started/benchmarks/cifar10_benchmark.py):
projection head 512-1024-256 (input: the backbone's width), prediction head 256-1024-256,
momentum from 0.996 to 1 on a cosine schedule, SGD lr 0.06 x batch/128, momentum 0.9, weight
decay 5e-4, cosine decay, and the same views as its SimCLR (``SimCLRTransform`` with
colour-jitter strength 0.5 and no blur at 32x32).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum
from lightly.transforms import SimCLRTransform
from torch import Tensor

from dim_ssl import DIMEncoder
from eval.methods.base import StepOutput
from eval.methods.momentum import momentum_copy, scheduled_momentum
from eval.methods.registry import register_method
from eval.methods.simclr import SimCLR
from eval.methods.two_view import TwoViewMethod

__all__ = ["BYOL"]


@register_method("byol")
class BYOL(TwoViewMethod):
    """BYOL (Grill et al., NeurIPS 2020) from lightly's parts.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder`: the online encoder, trained by gradient and
            probed. The target encoder is a frozen copy of it.
        num_classes, image_shape, transform, **common: See
            :class:`~eval.methods.two_view.TwoViewMethod`.
        hidden_dim: Hidden width of the projection and prediction heads (lightly's CIFAR-10: 1024).
        output_dim: Width of projections and predictions (256).
        momentum: Target momentum m at the start, ``target = m * target + (1 - m) * online``.
        momentum_end: m at the end of the run, reached on lightly's ``cosine_schedule`` (1.0).

    Attributes:
        projection_head, prediction_head: lightly's BYOL heads (online side).
        encoder_momentum, projection_head_momentum: The target network, moved only by
            :func:`lightly.models.utils.update_momentum`.
        criterion: lightly's ``NegativeCosineSimilarity``.
    """

    view_transform = SimCLRTransform
    small_image_recipe = SimCLR.small_image_recipe

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        hidden_dim: int = 1024,
        output_dim: int = 256,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        if hidden_dim < 1 or output_dim < 1:
            raise ValueError(f"hidden_dim and output_dim must be positive; got {hidden_dim}, {output_dim}")
        for name, value in (("momentum", momentum), ("momentum_end", momentum_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")
        self.momentum, self.momentum_end = float(momentum), float(momentum_end)
        self.projection_head = BYOLProjectionHead(encoder.pooled_dim, hidden_dim, output_dim)
        self.prediction_head = BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.encoder_momentum = momentum_copy(self.encoder)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    def current_momentum(self) -> float:
        """m at this step, on lightly's cosine schedule from ``momentum`` to ``momentum_end``."""
        return scheduled_momentum(self, self.momentum, self.momentum_end)

    @torch.no_grad()
    def targets(self, x: Tensor) -> Tensor:
        """Projections of the target network, no gradient."""
        return self.projection_head_momentum(self.encoder_momentum.pool(x))

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """Symmetric negative cosine similarity between predictions and the other view's targets."""
        m = self.current_momentum()
        update_momentum(self.encoder, self.encoder_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

        view0, view1 = views[0], views[1]
        pooled = self.encoder.pool(torch.cat([view0, view1]))  # one pass: BatchNorm sees all 2N
        p0, p1 = self.prediction_head(self.projection_head(pooled)).chunk(2)
        z0, z1 = self.targets(view0), self.targets(view1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return StepOutput(loss, features={"pool": pooled}, terms={"momentum": m})
