"""What SimCLR and MoCo share: the backbone view of a DIM encoder, the two-view transform,
the online classifier, the optimizer recipe and the frozen-feature contract.

The baselines exist to put DIM side by side with contrastive methods on *the same backbone*:
they take a :class:`dim_ssl.TimmEncoder` (or :class:`dim_ssl.PaperEncoder`), train only the
part of it that computes the backbone's pooled features, and put lightly's projection heads
and losses on top. Nothing lightly provides is rewritten here: losses, heads, momentum
updates, schedules, transforms and the online classifier all come from lightly.

The contract every method's LightningModule follows (DIM's too), which the harness relies on:

- ``module.encoder``: the encoder that is trained and probed;
- ``module.feature_positions``: the positions ``features`` accepts;
- ``module.features(x, position)``: frozen features ``(N, F)``, no gradient, mode untouched;
- ``module.multi_features(x, positions)``: the same for several positions from one forward
  (optional; :func:`eval.features.extract_features` uses it when it is there);
- ``training_step((views, labels), batch_idx)``: ``views`` is a list of augmented views (two
  here), ``labels`` only feed the online linear classifier.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.benchmarking import OnlineLinearClassifier
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import Tensor, nn

from eval.data import DatasetSpec, InputFormat, dataset_spec

__all__ = [
    "BASELINE_METHOD_DEFAULTS",
    "BASE_BATCH_SIZE",
    "ContrastiveBaseline",
    "TwoViewTransform",
    "baseline_from_config",
    "lightly_two_view_transform",
    "momentum_copy",
    "pooled_dim",
    "pooled_features",
    "views_from_config",
]

# lightly's CIFAR-10 benchmark (docs/source/getting_started/benchmarks/cifar10_benchmark.py)
# scales the learning rate linearly from a base of 0.06 at batch size 128:
# lr = 6e-2 * batch_size / 128, SGD momentum 0.9, weight decay 5e-4, cosine decay.
BASE_BATCH_SIZE = 128
DEFAULT_LR = 0.06
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_SGD_MOMENTUM = 0.9

# Inputs at most this wide get lightly's small-image recipe (its CIFAR-10 benchmark): no
# Gaussian blur, which on a 32-pixel image wipes out most of the content.
SMALL_IMAGE_SIZE = 32


# --------------------------------------------------------------------------------------------
# The backbone part of a DIM encoder


def _is_timm_encoder(encoder: nn.Module) -> bool:
    backbone = getattr(encoder, "backbone", None)
    return backbone is not None and hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")


def _is_paper_encoder(encoder: nn.Module) -> bool:
    return all(hasattr(encoder, name) for name in ("local", "last_conv", "image_size"))


def _backbone_modules(encoder: nn.Module) -> list[nn.Module]:
    """The sub-modules that compute the pooled features ("pool"), i.e. what a baseline trains."""
    if _is_timm_encoder(encoder):
        return [encoder.backbone]
    if _is_paper_encoder(encoder):
        return [encoder.local, encoder.last_conv]
    raise ValueError(
        f"expected a dim_ssl.TimmEncoder or dim_ssl.PaperEncoder (an encoder with a timm "
        f"`.backbone`, or with `.local` and `.last_conv`); got {type(encoder).__name__}"
    )


def pooled_dim(encoder: nn.Module) -> int:
    """Width of the backbone's pooled features ("pool") of a TimmEncoder or PaperEncoder."""
    if _is_timm_encoder(encoder):
        return int(encoder.pooled_dim)
    _backbone_modules(encoder)  # raises the helpful error for anything else
    side = encoder.image_size // 8  # three stride-2 convs
    channels = [m for m in encoder.last_conv.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    return int(channels * side * side)


def pooled_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """The backbone's pooled features ``(N, pooled_dim)`` of an encoder, *with* gradients.

    The same numbers as ``encoder.features(x, "pool")`` (which runs without gradients), but
    without computing the DIM-only parts (local map copy, MLP to y) that a baseline does not
    train. For a timm backbone: ``forward_features`` then ``forward_head(pre_logits=True)``.
    """
    in_chans = getattr(encoder, "in_chans", None)
    if x.dim() != 4 or (in_chans is not None and x.shape[1] != in_chans):
        raise ValueError(f"expected images of shape (N, {in_chans}, H, W); got {tuple(x.shape)}")
    if _is_timm_encoder(encoder):
        backbone = encoder.backbone
        return backbone.forward_head(backbone.forward_features(x), pre_logits=True).flatten(1)
    _backbone_modules(encoder)
    return encoder.last_conv(encoder.local(x)).flatten(1)


# --------------------------------------------------------------------------------------------
# Two augmented views with lightly's transforms


class TwoViewTransform:
    """Raw image -> list of two augmented, normalised views, with lightly's multi-view transform.

    Our datasets hand out raw tensors (uint8 or float, 1 or 3 channels, native size), while
    lightly's view transforms are written for PIL images (its Gaussian blur round-trips every
    tensor through PIL anyway). ``prepare`` brings the raw image to the channels and size the
    models see (exactly as :func:`eval.data.make_transform`'s evaluation transform does, so
    training views and probe inputs share their geometry) and hands a PIL image ("L" or
    "RGB") to ``views``, lightly's transform, which crops, jitters, converts to a tensor and
    normalises.

    Attributes:
        prepare: raw image -> PIL image at the model's size and channels.
        views: lightly's ``MultiViewTransform`` (``SimCLRTransform``, ``MoCoV2Transform``, ...).
    """

    def __init__(self, prepare: Callable[[Any], Any], views: Callable[[Any], list[Tensor]]) -> None:
        self.prepare = prepare
        self.views = views

    def __call__(self, image: Any) -> list[Tensor]:
        return self.views(self.prepare(image))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prepare={self.prepare}, views={type(self.views).__name__})"


def lightly_two_view_transform(
    transform_class: type,
    spec: DatasetSpec | str,
    image_size: int | None = None,
    channels: int | None = None,
    recipe: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> TwoViewTransform:
    """A :class:`TwoViewTransform` around one of lightly's two-view transforms for a dataset.

    Args:
        transform_class: lightly's transform class (``SimCLRTransform``, ``MoCoV2Transform``).
        spec: The dataset's spec or name (mean, std, native size and channels, hflip).
        image_size: Side of the views; default ``spec.default_image_size``.
        channels: 1 or 3; default ``spec.channels``.
        recipe: Keyword arguments of the method's recipe for this image size.
        **overrides: Any keyword argument of ``transform_class``, winning over the recipe.

    The normalisation is always the dataset's mean and std (not lightly's ImageNet default),
    so the views match what the probes see; a horizontal flip is used only where
    ``spec.hflip`` says it keeps the class (never for digits).
    """
    from torchvision.transforms import v2

    spec = dataset_spec(spec) if isinstance(spec, str) else spec
    input_format = InputFormat.of(spec, image_size, channels)
    size, mean, std = input_format.size, input_format.mean, input_format.std
    steps = input_format.steps()
    steps.append(v2.ToPILImage())  # float [0, 1] -> 8-bit "L" / "RGB"
    kwargs: dict[str, Any] = {
        "input_size": size,
        "hf_prob": 0.5 if spec.hflip else 0.0,
        "normalize": {"mean": list(mean), "std": list(std)},
        **(recipe or {}),
        **overrides,
    }
    return TwoViewTransform(v2.Compose(steps), transform_class(**kwargs))


# --------------------------------------------------------------------------------------------
# The shared LightningModule


class ContrastiveBaseline(pl.LightningModule, ABC):
    """Base of the SimCLR and MoCo baselines: backbone, online classifier, optimizer, features.

    Subclasses build their projection head as ``self.projection_head`` and their loss, and
    implement :meth:`contrastive_loss`, which returns the loss and the pooled features it
    computed on the way (detached here before they reach the online classifier).

    Args:
        encoder: The DIM encoder whose backbone is trained (``dim_ssl.TimmEncoder`` or
            ``dim_ssl.PaperEncoder``). Its DIM-only parts (the MLP to y) are frozen: the
            baseline neither uses nor trains them.
        num_classes: Classes of the online linear classifier.
        lr: Learning rate at batch size 128; the rate used is ``lr * batch_size / 128``
            (lightly's CIFAR-10 benchmark: 0.06, linear scaling).
        batch_size: Batch size per step, for the learning-rate scaling.
        weight_decay: SGD weight decay of the encoder and head (lightly's CIFAR-10: 5e-4).
        sgd_momentum: SGD momentum (0.9).
        warmup_epochs: Linear warm-up, in epochs, before the cosine decay (0 in lightly's
            CIFAR-10 benchmark).
        max_epochs: Length of the cosine schedule when the Trainer cannot say how many steps
            it will run; otherwise the Trainer's ``estimated_stepping_batches`` wins.

    Raises:
        ValueError: For an encoder that is neither kind, ``num_classes < 1`` or a
            non-positive ``lr``/``batch_size``.
    """

    #: Positions :meth:`features` accepts: the backbone's pooled features, the projection
    #: head's output, and the encoder's local map (flattened), as DIM's "conv".
    feature_positions: tuple[str, ...] = ("pool", "proj", "conv")

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        lr: float = DEFAULT_LR,
        batch_size: int = BASE_BATCH_SIZE,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        sgd_momentum: float = DEFAULT_SGD_MOMENTUM,
        warmup_epochs: float = 0.0,
        max_epochs: int = 200,
    ) -> None:
        super().__init__()
        trained = _backbone_modules(encoder)  # validates the encoder
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {num_classes}")
        if lr <= 0 or batch_size < 1:
            raise ValueError(f"lr and batch_size must be positive; got lr={lr}, batch_size={batch_size}")
        if warmup_epochs < 0 or max_epochs < 1:
            raise ValueError(f"need warmup_epochs >= 0 and max_epochs >= 1; got {warmup_epochs}, {max_epochs}")
        self.encoder = encoder
        # Freeze everything but the backbone: parameters that get no gradient would make DDP
        # fail ("did not receive grad") and would only cost optimizer time.
        deactivate_requires_grad(encoder)
        for module in trained:
            for parameter in module.parameters():
                parameter.requires_grad = True

        self.num_classes = int(num_classes)
        self.pooled_dim = pooled_dim(encoder)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.sgd_momentum = float(sgd_momentum)
        self.warmup_epochs = float(warmup_epochs)
        self.max_epochs = int(max_epochs)
        # top-5 needs at least 5 classes (topk on the logits would fail).
        topk = (1, 5) if num_classes >= 5 else (1,)
        self.online_classifier = OnlineLinearClassifier(
            feature_dim=self.pooled_dim, num_classes=num_classes, topk=topk
        )
        self.projection_head: nn.Module

    # ---- features -------------------------------------------------------------------------

    def backbone_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features of the (query) encoder, with gradients."""
        return pooled_features(self.encoder, x)

    def forward(self, x: Tensor) -> Tensor:
        """``x -> projection (N, output_dim)``, with gradients."""
        return self.projection_head(self.backbone_features(x))

    @torch.no_grad()
    def multi_features(self, x: Tensor, positions: Sequence[str]) -> dict[str, Tensor]:
        """Frozen features at several positions from one backbone pass: ``{position: (N, F)}``.

        Leaves the train/eval mode as it is: call ``.eval()`` first (as
        :func:`eval.features.extract_features` does) so BatchNorm uses running statistics.
        """
        unknown = [p for p in positions if p not in self.feature_positions]
        if unknown:
            raise ValueError(
                f"unknown position(s) {', '.join(map(repr, unknown))}; expected one of "
                f"{', '.join(self.feature_positions)}"
            )
        out: dict[str, Tensor] = {}
        if "pool" in positions or "proj" in positions:
            pooled = self.backbone_features(x)
            if "pool" in positions:
                out["pool"] = pooled
            if "proj" in positions:
                out["proj"] = self.projection_head(pooled)
        if "conv" in positions:
            out["conv"] = self.encoder.features(x, "conv").flatten(1)
        return {p: out[p] for p in positions}

    @torch.no_grad()
    def features(self, x: Tensor, position: str = "pool") -> Tensor:
        """Frozen features ``(N, F)`` at one position ("pool", "proj" or "conv"), no gradient."""
        return self.multi_features(x, (position,))[position]

    # ---- training -------------------------------------------------------------------------

    @abstractmethod
    def contrastive_loss(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The method's loss on a list of views, and pooled features the step computed anyway,
        for the online classifier: those of the first ``k`` views stacked view after view,
        ``(k * N, pooled_dim)``."""

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        views, labels = batch[0], batch[1]
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError(
                f"{type(self).__name__} needs batches (views, labels) with a list of two augmented "
                "views per image: build the dataset with its two-view transform "
                "(eval.baselines.simclr_transform / moco_transform)"
            )
        loss, features = self.contrastive_loss(views)
        batch_size = len(labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        # The epoch mean too, under the name DIM's module uses (run summaries read it).
        self.log("train_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        # Online linear evaluation on detached features (lightly's OnlineLinearClassifier
        # detaches again): it tracks how linearly separable the features are while training,
        # without shaping the encoder.
        repeats = features.shape[0] // batch_size  # views whose features came back
        cls_loss, cls_log = self.online_classifier.training_step(
            (features.detach(), labels.repeat(repeats)), batch_idx
        )
        self.log_dict(cls_log, batch_size=batch_size)
        return loss + cls_loss

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> Tensor:
        """Online classifier accuracy on single, evaluation-transformed images ``(images, labels)``."""
        images, labels = batch[0], batch[1]
        features = self.backbone_features(images)
        cls_loss, cls_log = self.online_classifier.validation_step((features.detach(), labels), batch_idx)
        self.log_dict(cls_log, prog_bar=True, batch_size=len(labels))
        return cls_loss

    # ---- optimizer ------------------------------------------------------------------------

    def trained_modules(self) -> list[nn.Module]:
        """What the method's loss trains: the backbone and the projection head."""
        return [*_backbone_modules(self.encoder), self.projection_head]

    @property
    def scaled_lr(self) -> float:
        """``lr * batch_size / 128``: lightly's linear scaling rule (CIFAR-10 benchmark)."""
        return self.lr * self.batch_size / BASE_BATCH_SIZE

    def total_steps(self) -> int:
        """Optimizer steps of the whole run: the Trainer's estimate when it has one."""
        trainer = self._trainer
        if trainer is not None:
            try:
                estimate = trainer.estimated_stepping_batches
            except Exception:  # no dataloader yet, or an unsized one
                estimate = math.inf
            if math.isfinite(estimate) and estimate > 0:
                return int(estimate)
        return self.max_epochs

    def steps_per_epoch(self) -> float:
        trainer = self._trainer
        max_epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if max_epochs is not None and max_epochs > 0:
            return self.total_steps() / max_epochs
        return 1.0

    def configure_optimizers(self) -> Any:
        params = [p for m in self.trained_modules() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            [
                {"name": "encoder_and_head", "params": params},
                # The online classifier is an evaluation device: no weight decay on it.
                {"name": "online_classifier", "params": list(self.online_classifier.parameters()),
                 "weight_decay": 0.0},
            ],
            lr=self.scaled_lr,
            momentum=self.sgd_momentum,
            weight_decay=self.weight_decay,
        )
        total = self.total_steps()
        scheduler = CosineWarmupScheduler(
            optimizer,
            warmup_epochs=min(int(self.warmup_epochs * self.steps_per_epoch()), total),
            max_epochs=total,
        )
        # Stepped every batch, so the cosine is smooth and runs limited by max_steps end at
        # the bottom of the schedule too.
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module``, to be updated by exponential moving average only."""
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


# --------------------------------------------------------------------------------------------
# Building a baseline from a run configuration (``method.name: simclr`` / ``moco``)

#: The ``method`` keys SimCLR and MoCo share: lightly's CIFAR-10 optimizer recipe (SGD at
#: ``lr`` for batch size 128, scaled linearly to ``data.batch_size``; cosine decay over
#: ``trainer.max_epochs``) and keyword arguments of the view transform (``SimCLRTransform`` /
#: ``MoCoV2Transform``, e.g. ``{min_scale: 0.2}``). The configuration's ``optimizer`` section
#: is DIM's; the baselines keep their own recipe here.
BASELINE_METHOD_DEFAULTS: dict[str, Any] = {
    "lr": DEFAULT_LR,
    "weight_decay": DEFAULT_WEIGHT_DECAY,
    "sgd_momentum": DEFAULT_SGD_MOMENTUM,
    "warmup_epochs": 0.0,
    "transform": {},
}


def views_from_config(
    build_views: Callable[..., TwoViewTransform], config: Mapping[str, Any], spec: DatasetSpec
) -> TwoViewTransform:
    """The two-view training transform a configuration asks for (its data format, ``method.transform``).

    Raises:
        eval.config.ConfigError: ``method.transform`` holds an argument the transform refuses.
    """
    from eval.config import ConfigError

    data, method = config["data"], config["method"]
    size = int(data["image_size"] or spec.default_image_size)
    channels = int(data["channels"] or spec.channels)
    try:
        return build_views(spec, size, channels, **dict(method.get("transform") or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method.transform of {method['name']}: {err}") from None


def baseline_from_config(
    module_class: type[ContrastiveBaseline], config: Mapping[str, Any], data: Any, **method_kwargs: Any
) -> ContrastiveBaseline:
    """A baseline module on the configuration's encoder, with the shared optimizer recipe.

    ``data`` is an :class:`eval.methods.DataInfo`; ``method_kwargs`` are the method's own
    arguments (temperature, head widths, ...).

    Raises:
        eval.config.ConfigError: An encoder that cannot be built, a setting the module refuses,
            or ``monitor.best: knn`` (the baselines log the online probe, not DIM's kNN check).
    """
    from eval.config import ConfigError
    from eval.methods import build_encoder

    method = config["method"]
    if config["monitor"]["best"] == "knn":
        raise ConfigError(
            f"monitor.best=knn needs DIM's kNN check; {method['name']} logs the online probe only "
            "(val_online_cls_top1): use monitor.best=online"
        )
    encoder = build_encoder(config["encoder"], data.channels, data.image_size)
    try:
        return module_class(
            encoder,
            num_classes=data.num_classes,
            lr=float(method["lr"]),
            batch_size=int(config["data"]["batch_size"]),
            weight_decay=float(method["weight_decay"]),
            sgd_momentum=float(method["sgd_momentum"]),
            warmup_epochs=float(method["warmup_epochs"]),
            max_epochs=max(int(config["trainer"]["max_epochs"]), 1),
            **method_kwargs,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method {method['name']}: {err}") from None
