"""SimCLR baseline from lightly's parts, on the same timm backbone as DIM.

SimCLR: Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020 (https://arxiv.org/abs/2002.05709). Two augmented views of
every image go through the encoder f and a projection head g; the NT-Xent (normalised,
temperature-scaled cross-entropy) loss pulls the two views of an image together and pushes
the other 2(N-1) views of the batch away.

Everything method-specific comes from lightly: ``NTXentLoss``, ``SimCLRProjectionHead``,
``SimCLRTransform``, ``CosineWarmupScheduler``, ``OnlineLinearClassifier``. The recipe is
lightly's CIFAR-10 benchmark (docs/source/getting_started/benchmarks/cifar10_benchmark.py):
projection head 512-512-128 (input: the backbone's width), temperature 0.5, SGD lr
0.06 x batch/128, momentum 0.9, weight decay 5e-4, cosine decay; views from
``SimCLRCollateFunction(input_size=32, gaussian_blur=0.)``, i.e. colour-jitter strength 0.5
and no blur, which is ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``
in lightly 1.6.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn

from eval.baselines.base import (
    BASE_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_SGD_MOMENTUM,
    DEFAULT_WEIGHT_DECAY,
    SMALL_IMAGE_SIZE,
    ContrastiveBaseline,
    BASELINE_METHOD_DEFAULTS,
    TwoViewTransform,
    baseline_from_config,
    lightly_two_view_transform,
    views_from_config,
)
from eval.data import DatasetSpec, dataset_spec
from eval.methods import DataInfo, register_method

__all__ = ["SIMCLR_METHOD_DEFAULTS", "SIMCLR_SMALL_IMAGE_RECIPE", "SimCLRModule", "build_simclr", "simclr_transform"]

# lightly's CIFAR-10 benchmark views: SimCLRCollateFunction(input_size=32, gaussian_blur=0.)
# with that class's default cj_strength=0.5 (SimCLRTransform's docstring also recommends 0.5
# for small images). Crop scale (0.08, 1), grayscale 0.2 and jitter probability 0.8 are
# SimCLRTransform's defaults. On 1-channel images saturation, hue and grayscale are no-ops.
SIMCLR_SMALL_IMAGE_RECIPE: dict[str, Any] = {"cj_strength": 0.5, "gaussian_blur": 0.0}


def simclr_transform(
    spec: DatasetSpec | str,
    image_size: int | None = None,
    channels: int | None = None,
    **overrides: Any,
) -> TwoViewTransform:
    """SimCLR's two views (lightly's ``SimCLRTransform``) for a dataset, normalised with its stats.

    Images up to 32 pixels get lightly's CIFAR-10 recipe (:data:`SIMCLR_SMALL_IMAGE_RECIPE`),
    larger ones ``SimCLRTransform``'s ImageNet defaults. Keyword arguments of
    ``SimCLRTransform`` (``min_scale``, ``cj_prob``, ``gaussian_blur``, ``rr_prob``, ...) override
    both.

    Example::

        train = load_dataset("digits", "train", transform=simclr_transform("digits"))
        (view0, view1), label = train[0]            # two (1, 32, 32) tensors
    """
    spec = dataset_spec(spec) if isinstance(spec, str) else spec
    size = spec.default_image_size if image_size is None else int(image_size)
    recipe = SIMCLR_SMALL_IMAGE_RECIPE if size <= SMALL_IMAGE_SIZE else {}
    return lightly_two_view_transform(SimCLRTransform, spec, size, channels, recipe, **overrides)


class SimCLRModule(ContrastiveBaseline):
    """SimCLR (Chen et al., ICML 2020) as a LightningModule, on a DIM encoder's backbone.

    Args:
        encoder: ``dim_ssl.TimmEncoder`` (or ``PaperEncoder``); its backbone is trained.
        num_classes: Classes of the online linear classifier.
        lr: Learning rate at batch size 128 (scaled by ``batch_size / 128``).
        batch_size: Images per step (for the learning-rate scaling).
        temperature: NT-Xent temperature (lightly's CIFAR-10 benchmark: 0.5, NTXentLoss's
            default; the paper's best for large batches is 0.1).
        hidden_dim, output_dim: Projection head widths (lightly's CIFAR-10: 512 and 128).
        weight_decay, sgd_momentum, warmup_epochs, max_epochs: see
            :class:`~eval.baselines.base.ContrastiveBaseline`.

    Attributes:
        encoder: The encoder; ``encoder.backbone`` is what SimCLR trains.
        projection_head: lightly's ``SimCLRProjectionHead`` (g in the paper).
        criterion: lightly's ``NTXentLoss`` (no memory bank).
        online_classifier: lightly's ``OnlineLinearClassifier`` on detached pooled features.

    Raises:
        ValueError: For an encoder that is neither kind, or a non-positive setting.

    Example::

        encoder = dim_ssl.TimmEncoder("resnet18", in_chans=1)
        model = SimCLRModule(encoder, num_classes=10, batch_size=256)
        data = load_dataset("fashion-mnist", "train", transform=simclr_transform("fashion-mnist"))
        trainer = pl.Trainer(max_epochs=100)
        trainer.fit(model, DataLoader(data, batch_size=256, shuffle=True, drop_last=True))
        feats = model.eval().features(images, "pool")
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        lr: float = DEFAULT_LR,
        batch_size: int = BASE_BATCH_SIZE,
        temperature: float = 0.5,
        hidden_dim: int = 512,
        output_dim: int = 128,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        sgd_momentum: float = DEFAULT_SGD_MOMENTUM,
        warmup_epochs: float = 0.0,
        max_epochs: int = 200,
    ) -> None:
        super().__init__(
            encoder, num_classes, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
            sgd_momentum=sgd_momentum, warmup_epochs=warmup_epochs, max_epochs=max_epochs,
        )
        if temperature <= 0 or hidden_dim < 1 or output_dim < 1:
            raise ValueError(
                f"temperature, hidden_dim and output_dim must be positive; got {temperature}, "
                f"{hidden_dim}, {output_dim}"
            )
        # The encoder is a module, not a hyperparameter: the checkpoint holds its weights.
        self.save_hyperparameters(ignore=["encoder"])
        self.temperature = float(temperature)
        self.projection_head = SimCLRProjectionHead(self.pooled_dim, hidden_dim, output_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def contrastive_loss(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """NT-Xent between the projections of the two views (eq. 1 of the paper)."""
        view0, view1 = views[0], views[1]
        # One pass over both views: BatchNorm sees all 2N images, as in the paper's setup
        # and lightly's benchmarks, and a single larger batch is faster than two.
        features = self.backbone_features(torch.cat([view0, view1]))
        z0, z1 = self.projection_head(features).chunk(2)
        return self.criterion(z0, z1), features


# --------------------------------------------------------------------------------------------
# ``method.name: simclr`` in a run configuration (``dim-ssl pretrain``, ``compare``)

#: The keys of the ``method`` section for simclr: the module's arguments (lightly's CIFAR-10
#: recipe) plus the shared optimizer recipe and ``transform`` of
#: :data:`~eval.baselines.base.BASELINE_METHOD_DEFAULTS`.
SIMCLR_METHOD_DEFAULTS: dict[str, Any] = {
    "temperature": 0.5,
    "hidden_dim": 512,
    "output_dim": 128,
    **BASELINE_METHOD_DEFAULTS,
}


def _simclr_views(config: dict[str, Any], spec: DatasetSpec) -> TwoViewTransform:
    return views_from_config(simclr_transform, config, spec)


@register_method(
    "simclr", defaults=SIMCLR_METHOD_DEFAULTS, free_form=("transform",), train_transform=_simclr_views,
    description="SimCLR (Chen et al., ICML 2020) from lightly's parts",
)
def build_simclr(config: dict[str, Any], data: DataInfo) -> SimCLRModule:
    """``SimCLRModule`` on the configuration's encoder, trained on two views per image."""
    method = config["method"]
    return baseline_from_config(
        SimCLRModule, config, data,
        temperature=float(method["temperature"]),
        hidden_dim=int(method["hidden_dim"]),
        output_dim=int(method["output_dim"]),
    )
