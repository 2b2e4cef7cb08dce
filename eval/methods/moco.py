"""MoCo v2 from lightly's parts, on the same backbone as DIM.

MoCo: He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (https://arxiv.org/abs/1911.05722); MoCo v2: Chen, Fan, Girshick & He,
"Improved Baselines with Momentum Contrastive Learning", 2020
(https://arxiv.org/abs/2003.04297). A query encoder is trained by InfoNCE to match the key of
the other view of its image against a queue of keys from earlier batches; the key encoder is
not trained by gradient but follows the query encoder as an exponential moving average, so
the queued keys stay consistent. v2 adds an MLP projection head, blur and stronger crops.

Everything method-specific comes from lightly: ``NTXentLoss(memory_bank_size=...)`` (InfoNCE
against lightly's ``MemoryBankModule`` queue), ``MoCoProjectionHead``, ``update_momentum``,
``deactivate_requires_grad``, ``batch_shuffle``/``batch_unshuffle``, ``cosine_schedule``
``MoCoV2Transform``. The recipe is lightly's CIFAR-10 benchmark
(docs/source/getting_started/benchmarks/cifar10_benchmark.py): projection head 512-512-128,
temperature 0.1, a queue of 4096 keys, momentum 0.99, symmetric loss, SGD lr 0.06 x batch/128,
momentum 0.9, weight decay 5e-4, cosine decay; views without blur at 32x32.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
from lightly.transforms import MoCoV2Transform
from torch import Tensor

from dim_ssl import DIMEncoder, EncoderOutput
from eval.methods.base import StepOutput
from eval.methods.momentum import momentum_copy, scheduled_momentum
from eval.methods.registry import register_method
from eval.methods.two_view import TwoViewMethod

__all__ = ["MoCo"]


@register_method("moco")
class MoCo(TwoViewMethod):
    """MoCo v2 (He et al., CVPR 2020; Chen et al. 2020) from lightly's parts.

    Args:
        encoder: A :class:`dim_ssl.DIMEncoder`: the query encoder, trained by gradient and
            probed. The key encoder is a frozen copy of it.
        num_classes, image_shape, transform, **common: See
            :class:`~eval.methods.two_view.TwoViewMethod`.
        temperature: InfoNCE temperature (lightly's CIFAR-10 benchmark: 0.1; MoCo v2: 0.2).
        memory_bank_size: Keys in the queue (lightly's CIFAR-10 benchmark: 4096 at batch 128,
            8192 at batch 512; the paper: 65536 on ImageNet).
        momentum: Key-encoder momentum m in ``key = m * key + (1 - m) * query`` (0.99).
        momentum_end: When set, m follows lightly's ``cosine_schedule`` from ``momentum`` to
            this value over the run (as in lightly's examples, 0.996 -> 1); ``None`` keeps m
            constant (lightly's CIFAR-10 benchmark).
        symmetric: Use both views as query and as key and average the two losses (lightly's
            CIFAR-10 benchmark and the MoCo CIFAR demo: faster training for little compute).
        hidden_dim, output_dim: Projection head widths (512 and 128).

    Attributes:
        projection_head: lightly's ``MoCoProjectionHead`` (query side).
        encoder_momentum, projection_head_momentum: The key encoder and head:
            ``requires_grad`` is False, they move only by :func:`lightly.models.utils.update_momentum`.
        criterion: lightly's ``NTXentLoss`` with a memory bank of ``(memory_bank_size, output_dim)``.
    """

    view_transform = MoCoV2Transform
    # MoCoV2Transform's own values (jitter 0.4/0.4/0.4/0.1 with p 0.8, crop scale (0.2, 1),
    # grayscale 0.2) minus the blur, as lightly's CIFAR-10 benchmark drops it for 32x32 images.
    small_image_recipe = {"gaussian_blur": 0.0}

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        temperature: float = 0.1,
        memory_bank_size: int = 4096,
        momentum: float = 0.99,
        momentum_end: float | None = None,
        symmetric: bool = True,
        hidden_dim: int = 512,
        output_dim: int = 128,
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        if temperature <= 0 or memory_bank_size < 1 or hidden_dim < 1 or output_dim < 1:
            raise ValueError(
                "temperature, memory_bank_size, hidden_dim and output_dim must be positive; got "
                f"{temperature}, {memory_bank_size}, {hidden_dim}, {output_dim}"
            )
        for name, value in (("momentum", momentum), ("momentum_end", momentum_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")
        self.momentum = float(momentum)
        self.momentum_end = None if momentum_end is None else float(momentum_end)
        self.symmetric = bool(symmetric)
        self.projection_head = MoCoProjectionHead(encoder.pooled_dim, hidden_dim, output_dim)
        # The key encoder: a copy that only ever moves by momentum.
        self.encoder_momentum = momentum_copy(self.encoder)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        # lightly 1.6 wants the queue's feature dimension: (num_keys, dim).
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(int(memory_bank_size), output_dim))

    def current_momentum(self) -> float:
        """m at this step: constant, or lightly's cosine schedule towards ``momentum_end``."""
        return scheduled_momentum(self, self.momentum, self.momentum_end)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Key projections of the momentum encoder, no gradient.

        The batch is shuffled before the key encoder and unshuffled after it (MoCo's shuffling
        BN): on several devices it keeps BatchNorm from leaking which key matches which query.
        """
        distributed = self._trainer is not None and self.trainer.world_size > 1
        shuffled, order = batch_shuffle(x, distributed=distributed)
        keys = self.projection_head_momentum(self.encoder_momentum.pool(shuffled))
        return batch_unshuffle(keys, order, distributed=distributed)

    def query_pass(self, x: Tensor) -> tuple[Tensor, EncoderOutput | None]:
        """The query encoder's pass: pooled features, and the whole encoding when a subclass
        uses more of it (:class:`~eval.methods.moco_dim.MoCoDIM` scores its map and summary)."""
        return self.encoder.pool(x), None

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """InfoNCE of each query against its key and the queue (eq. 1 of He et al.)."""
        return self.moco_loss(views)[0]

    def moco_loss(self, views: Sequence[Tensor]) -> tuple[StepOutput, EncoderOutput | None]:
        """MoCo's step and the query pass's encoding (from :meth:`query_pass`)."""
        # Move the key encoder first, as lightly's benchmark does (the order is immaterial for
        # the result up to one step).
        m = self.current_momentum()
        update_momentum(self.encoder, self.encoder_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

        view0, view1 = views[0], views[1]
        if self.symmetric:
            pooled, encoded = self.query_pass(torch.cat([view0, view1]))
            queries = self.projection_head(pooled)  # q0 then q1
            keys = torch.cat([self.keys(view1), self.keys(view0)])  # k1 then k0
            # One call on both directions: the mean over the 2N rows is exactly
            # (loss(q0, k1) + loss(q1, k0)) / 2, both against the queue as it was before this
            # step, and then all 2N keys are queued. Two separate calls would queue k1 first
            # and make it a negative of q1, its own image (the MoCo CIFAR demo queues after
            # both losses for the same reason).
            loss = self.criterion(queries, keys)
        else:
            pooled, encoded = self.query_pass(view0)
            loss = self.criterion(self.projection_head(pooled), self.keys(view1))
        return StepOutput(loss, features={"pool": pooled}, terms={"momentum": m}), encoded
