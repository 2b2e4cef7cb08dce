"""MoCo with DIM's local term on the query encoder: the plugin added to a momentum-contrast pipeline.

As :mod:`eval.methods.simclr_dim` for SimCLR: the query encoder's pass gives the pooled features
MoCo projects and, from the same pass, the local map and summary ``dim_ssl.DIMHead`` scores::

    encoded = encoder.encode(torch.cat([view_a, view_b]))         # the query pass
    queries = projection_head(encoded.pooled)
    loss = moco_criterion(queries, keys) + lam * head(encoded.feature_map, encoded.y).loss

The key encoder (a momentum copy) is untouched by DIM: it has no head and no gradient.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from dim_ssl import DIMEncoder, EncoderOutput
from eval.methods.base import StepOutput, by_position
from eval.methods.dim import LOCAL_HEAD_DEFAULTS, companion_head, head_terms, term_values
from eval.methods.moco import MoCo
from eval.methods.registry import register_method

__all__ = ["MoCoDIM"]


@register_method("moco+dim")
class MoCoDIM(MoCo):
    """MoCo v2 (He et al., CVPR 2020) plus DIM's local term (Hjelm et al., ICLR 2019).

    ``loss = MoCo's InfoNCE + dim_weight * DIMHead(feature map, y).loss`` on the query encoder's
    one pass (both views when ``symmetric``). MoCo's recipe (lightly's CIFAR-10) for the rest.

    Args:
        encoder, num_classes, image_shape, temperature, memory_bank_size, momentum,
            momentum_end, symmetric, hidden_dim, output_dim, transform, **common: See
            :class:`~eval.methods.moco.MoCo`.
        dim_weight: lam, the weight of DIM's loss against MoCo's.
        head: Keyword arguments of ``dim_ssl.DIMHead`` (default: the local term alone).

    Logged terms: ``train_moco``, ``train_momentum`` and DIM's (``train_local_mi``, ...).
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
        self.track_terms("moco", *self.terms)

    def query_pass(self, x: Tensor) -> tuple[Tensor, EncoderOutput | None]:
        """The whole encoding: DIM scores its map and summary."""
        encoded = self.encoder.encode(x)
        return encoded.pooled, encoded

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """MoCo's loss plus ``dim_weight`` times DIM's on the query pass."""
        moco, encoded = self.moco_loss(views)
        assert encoded is not None
        dim = self.head(encoded.feature_map, encoded.y)
        terms = {"moco": moco.loss.detach(), **moco.terms, **term_values(dim, self.terms)}
        return StepOutput(moco.loss + self.dim_weight * dim.loss, features=by_position(encoded), terms=terms)
