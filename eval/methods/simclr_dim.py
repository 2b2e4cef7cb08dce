"""SimCLR with DIM's local term on the same encoder: what the plugin exists for.

A lightly SimCLR pipeline gains DIM by one head and one line: the encoder's local map and
summary from the same pass that gives the pooled features, scored by ``dim_ssl.DIMHead``::

    head = dim_ssl.DIMHead(encoder.feature_channels, encoder.global_dim, gamma=0.0)   # local term
    for (view_a, view_b), _ in loader:                       # lightly's SimCLRTransform
        encoded = encoder.encode(torch.cat([view_a, view_b]))
        z_a, z_b = projection_head(encoded.pooled).chunk(2)
        loss = ntxent(z_a, z_b) + lam * head(encoded.feature_map, encoded.y).loss   # the one line
        optimizer.zero_grad(); loss.backward(); optimizer.step()

DIM's term here is one-view DIM(L) on every view (each view's map against its own summary):
the local features are asked to carry what the summary of their image carries, on top of
SimCLR's invariance across views. The summary MLP (pooled -> y) is trained, as in DIM.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from dim_ssl import DIMEncoder
from eval.methods.base import StepOutput, by_position
from eval.methods.dim import LOCAL_HEAD_DEFAULTS, companion_head, head_terms, term_values
from eval.methods.registry import register_method
from eval.methods.simclr import SimCLR

__all__ = ["SimCLRDIM"]


@register_method("simclr+dim")
class SimCLRDIM(SimCLR):
    """SimCLR (Chen et al., ICML 2020) plus DIM's local term (Hjelm et al., ICLR 2019).

    ``loss = NT-Xent + dim_weight * DIMHead(feature map, y).loss`` on one encoder pass over both
    views. SimCLR's recipe (lightly's CIFAR-10: views, heads, SGD) for everything else.

    Args:
        encoder, num_classes, image_shape, temperature, hidden_dim, output_dim, transform,
            **common: See :class:`~eval.methods.simclr.SimCLR`.
        dim_weight: lam, the weight of DIM's loss against NT-Xent's.
        head: Keyword arguments of ``dim_ssl.DIMHead`` (default: the local term alone).

    Logged terms: ``train_ntxent`` and DIM's (``train_local_mi``, ...).
    """

    trains_summary = True  # y feeds DIM's term

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        dim_weight: float = 1.0,
        head: Mapping[str, Any] = LOCAL_HEAD_DEFAULTS,
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        self.dim_weight, self.head = companion_head(encoder, dim_weight, head)
        self.terms = head_terms(self.head)
        self.track_terms("ntxent", *self.terms)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """NT-Xent between the views' projections plus ``dim_weight`` times DIM's loss."""
        encoded = self.encoder.encode(torch.cat(list(views)))
        z0, z1 = self.projection_head(encoded.pooled).chunk(2)
        contrastive = self.criterion(z0, z1)
        dim = self.head(encoded.feature_map, encoded.y)
        terms = {"ntxent": contrastive.detach(), **term_values(dim, self.terms)}
        return StepOutput(contrastive + self.dim_weight * dim.loss, features=by_position(encoded), terms=terms)
