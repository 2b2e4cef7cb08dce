"""Contrastive baselines built from lightly's own parts, on the same backbone as DIM.

- :class:`SimCLRModule` (Chen et al., ICML 2020) with :func:`simclr_transform`;
- :class:`MoCoModule` (MoCo v2: He et al., CVPR 2020; Chen et al. 2020) with :func:`moco_transform`.

Both take a ``dim_ssl.TimmEncoder`` and train its backbone, so DIM and the baselines share the
exact same architecture; both follow the method contract of :mod:`eval.baselines.base`
(``.encoder``, ``.feature_positions``, ``.features(x, position)``, batches ``(views, labels)``,
an online linear classifier). :data:`BASELINES` maps a method name to its module class and
transform builder, for registries keyed by name.

Example::

    encoder = dim_ssl.TimmEncoder("resnet18", in_chans=1)
    model = SimCLRModule(encoder, num_classes=10, batch_size=256)
    train = load_dataset("fashion-mnist", "train", transform=simclr_transform("fashion-mnist"))
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from eval.baselines.base import ContrastiveBaseline, TwoViewTransform, pooled_features
from eval.baselines.moco import MOCO_SMALL_IMAGE_RECIPE, MoCoModule, moco_transform
from eval.baselines.simclr import SIMCLR_SMALL_IMAGE_RECIPE, SimCLRModule, simclr_transform


class Baseline(NamedTuple):
    """A baseline method: its LightningModule class and its two-view transform builder."""

    module: type[ContrastiveBaseline]
    transform: Callable[..., TwoViewTransform]


BASELINES: dict[str, Baseline] = {
    "simclr": Baseline(SimCLRModule, simclr_transform),
    "moco": Baseline(MoCoModule, moco_transform),
}

__all__ = [
    "BASELINES",
    "Baseline",
    "ContrastiveBaseline",
    "MOCO_SMALL_IMAGE_RECIPE",
    "MoCoModule",
    "SIMCLR_SMALL_IMAGE_RECIPE",
    "SimCLRModule",
    "TwoViewTransform",
    "moco_transform",
    "pooled_features",
    "simclr_transform",
]
