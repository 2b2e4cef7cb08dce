"""SimCLR from lightly's parts, on the same backbone as DIM.

SimCLR: Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020 (https://arxiv.org/abs/2002.05709). Two augmented views of
every image go through the encoder f and a projection head g; the NT-Xent (normalised,
temperature-scaled cross-entropy) loss pulls the two views of an image together and pushes
the other 2(N-1) views of the batch away.

Everything method-specific comes from lightly: ``NTXentLoss``, ``SimCLRProjectionHead``,
``SimCLRTransform``. The recipe is lightly's CIFAR-10 benchmark
(docs/source/getting_started/benchmarks/cifar10_benchmark.py): projection head 512-512-128
(input: the backbone's width), temperature 0.5, SGD lr 0.06 x batch/128, momentum 0.9, weight
decay 5e-4, cosine decay; views from ``SimCLRCollateFunction(input_size=32, gaussian_blur=0.)``,
i.e. colour-jitter strength 0.5 and no blur, which is
``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` in lightly 1.6.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor

from dim_ssl import DIMEncoder
from eval.methods.base import StepOutput
from eval.methods.registry import register_method
from eval.methods.two_view import TwoViewMethod

__all__ = ["SimCLR"]


@register_method("simclr")
class SimCLR(TwoViewMethod):
    """SimCLR (Chen et al., ICML 2020) from lightly's parts.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder`; its backbone is trained.
        num_classes, image_shape, transform, **common: See
            :class:`~eval.methods.two_view.TwoViewMethod`.
        temperature: NT-Xent temperature (lightly's CIFAR-10 benchmark: 0.5, NTXentLoss's
            default; the paper's best for large batches is 0.1).
        hidden_dim, output_dim: Projection head widths (lightly's CIFAR-10: 512 and 128).

    Attributes:
        projection_head: lightly's ``SimCLRProjectionHead`` (g in the paper).
        criterion: lightly's ``NTXentLoss`` (no memory bank; negatives gathered across DDP ranks).

    Example::

        encoder = dim_ssl.TimmEncoder("resnet18", in_chans=1)
        model = SimCLR(encoder, num_classes=10, image_shape=(1, 32, 32), batch_size=256)
        views = model.train_transform(dataset_spec("fashion-mnist"), 32, 1)
        data = load_dataset("fashion-mnist", "train", transform=views)
        pl.Trainer(max_epochs=100).fit(model, DataLoader(data, batch_size=256, shuffle=True, drop_last=True))
    """

    view_transform = SimCLRTransform
    # lightly's CIFAR-10 benchmark views (see the module docstring). Crop scale (0.08, 1),
    # grayscale 0.2 and jitter probability 0.8 are SimCLRTransform's defaults; on 1-channel
    # images saturation, hue and grayscale are no-ops.
    small_image_recipe = {"cj_strength": 0.5, "gaussian_blur": 0.0}

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        temperature: float = 0.5,
        hidden_dim: int = 512,
        output_dim: int = 128,
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        if temperature <= 0 or hidden_dim < 1 or output_dim < 1:
            raise ValueError(
                "temperature, hidden_dim and output_dim must be positive; "
                f"got {temperature}, {hidden_dim}, {output_dim}"
            )
        self.projection_head = SimCLRProjectionHead(encoder.pooled_dim, hidden_dim, output_dim)
        # Negatives from every DDP rank, as DIM's head gathers them (a no-op on one process).
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """NT-Xent between the projections of the two views (eq. 1 of the paper)."""
        # One pass over both views: BatchNorm sees all 2N images, as in the paper's setup and
        # lightly's benchmarks, and one larger batch is faster than two.
        pooled = self.encoder.pool(torch.cat(list(views)))
        z0, z1 = self.projection_head(pooled).chunk(2)
        return StepOutput(self.criterion(z0, z1), features={"pool": pooled})
