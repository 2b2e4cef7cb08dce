"""Multi-view methods (SimCLR, MoCo, BYOL, multi-view DIM): lightly's view transforms, shared bases.

The contrastive and self-distillation baselines exist to put DIM side by side with them on
*the same backbone*: they take a :class:`dim_ssl.DIMEncoder`, train the part of it that
computes the pooled features (``encoder.pool``), leave DIM's summary MLP frozen, and put
lightly's heads and losses on top. Nothing lightly provides is rewritten: losses, heads,
momentum updates, schedules, transforms and the online classifier all come from lightly.

:class:`TwoViewMethod` adds to :class:`~eval.methods.base.MethodModule` what these methods
share: two views per image from one of lightly's multi-view transforms (``view_transform``,
with lightly's CIFAR-10 recipe for small images), a ``transform`` key in the ``method`` section
whose entries override the transform's keyword arguments, the projection head's output as
the probe position ``"proj"``, and lightly's CIFAR-10 optimizer recipe (:data:`LIGHTLY_CIFAR10`).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from torch import Tensor, nn
from torchvision.transforms import v2

from dim_ssl import DIMEncoder, EncoderOutput
from eval.data import DatasetSpec, InputFormat, StagedTransform
from eval.methods.base import MethodModule

__all__ = [
    "LIGHTLY_CIFAR10",
    "SMALL_IMAGE_SIZE",
    "MultiViewMethod",
    "TwoViewMethod",
    "TwoViewTransform",
    "lightly_two_view_transform",
]

#: lightly's CIFAR-10 benchmark (docs/source/getting_started/benchmarks/cifar10_benchmark.py):
#: SGD at lr 0.06 for batch size 128, scaled linearly, momentum 0.9, weight decay 5e-4, cosine
#: decay; the online classifier at the same rate.
LIGHTLY_CIFAR10: dict[str, dict[str, Any]] = {
    "optimizer": {
        "name": "sgd",
        "lr": 0.06,
        "reference_batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
    },
    "monitor": {"online_lr": 0.06},
}

# Inputs at most this wide get lightly's small-image recipe (its CIFAR-10 benchmark): no
# Gaussian blur, which on a 32-pixel image wipes out most of the content.
SMALL_IMAGE_SIZE = 32


class TwoViewTransform(StagedTransform):
    """Raw image -> list of augmented, normalised views, with lightly's multi-view transform.

    Our datasets hand out raw tensors (uint8 or float, 1 or 3 channels, native size), while
    lightly's view transforms are written for PIL images (its Gaussian blur round-trips every
    tensor through PIL anyway). The fixed stage brings the raw image to the channels and size
    the models see (exactly as :func:`eval.data.make_transform`'s evaluation transform does, so
    training views and probe inputs share their geometry; an in-memory dataset computes it once
    for all images, see :class:`eval.data.StagedTransform`); the random stage hands a PIL image
    ("L" or "RGB") to ``views``, lightly's transform, which crops, jitters, converts to a tensor
    and normalises. View transforms that take tensors (``takes_tensors = True``, as
    :class:`eval.methods.mvdim.TranslationViews`) get the float tensor itself, without the PIL
    round trip.

    Args:
        prepare: Raw image -> float tensor in [0, 1] at the model's size and channels.
        views: lightly's ``MultiViewTransform`` (``SimCLRTransform``, ``MoCoV2Transform``, ...).
        to_pil: Hand ``views`` a PIL image (lightly's transforms) rather than the tensor.

    Attributes:
        views: The view transform.
    """

    def __init__(
        self, prepare: Callable[[Any], Any], views: Callable[[Any], list[Tensor]], to_pil: bool = True
    ) -> None:
        self.views = views
        super().__init__(prepare, v2.Compose([v2.ToPILImage(), views]) if to_pil else views)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prepare={self.fixed}, views={type(self.views).__name__})"


def lightly_two_view_transform(
    transform_class: type,
    spec: DatasetSpec,
    image_size: int | None = None,
    channels: int | None = None,
    small_image_recipe: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> TwoViewTransform:
    """A :class:`TwoViewTransform` around one of lightly's multi-view transforms for a dataset.

    Args:
        transform_class: lightly's transform class (``SimCLRTransform``, ``MoCoV2Transform``).
        spec: The dataset's spec (mean, std, native size and channels, hflip).
        image_size: Side of the views; default ``spec.default_image_size``.
        channels: 1 or 3; default ``spec.channels``.
        small_image_recipe: Keyword arguments for images of at most :data:`SMALL_IMAGE_SIZE`
            pixels (lightly's CIFAR-10 benchmark).
        **overrides: Any keyword argument of ``transform_class``, winning over the recipe.

    The normalisation is always the dataset's mean and std (not lightly's ImageNet default),
    so the views match what the probes see; a horizontal flip is used only where
    ``spec.hflip`` says it keeps the class (never for digits).

    Raises:
        TypeError, ValueError: An argument ``transform_class`` refuses.
    """
    input_format = InputFormat.of(spec, image_size, channels)
    prepare = v2.Compose([*input_format.steps(), v2.ToPureTensor()])  # float [0, 1]
    recipe = small_image_recipe if input_format.size <= SMALL_IMAGE_SIZE else None
    kwargs: dict[str, Any] = {
        "input_size": input_format.size,
        "hf_prob": 0.5 if spec.hflip else 0.0,
        "normalize": {"mean": list(input_format.mean), "std": list(input_format.std)},
        **(recipe or {}),
        **overrides,
    }
    to_pil = not getattr(transform_class, "takes_tensors", False)  # float [0, 1] -> 8-bit "L" / "RGB"
    return TwoViewTransform(prepare, transform_class(**kwargs), to_pil=to_pil)


class MultiViewMethod(MethodModule):
    """Base of the methods that train on several augmented views of each image.

    Subclasses set :attr:`view_transform` (one of lightly's multi-view transforms, or any class
    that takes ``input_size``, ``hf_prob`` and ``normalize`` and returns a list of views) and
    :attr:`small_image_recipe`, and implement ``training_loss`` on the list of views.

    Args:
        encoder, num_classes, image_shape, **common: See :class:`~eval.methods.base.MethodModule`.
        transform: Keyword arguments of :attr:`view_transform` that override the recipe (e.g.
            ``{min_scale: 0.2}``).
    """

    num_views = 2
    view_transform: ClassVar[type]
    small_image_recipe: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        encoder: DIMEncoder,
        num_classes: int,
        image_shape: Sequence[int],
        *,
        transform: Mapping[str, Any] = {},  # {}: a free-form section (read, never mutated)
        **common: Any,
    ) -> None:
        super().__init__(encoder, num_classes, image_shape, **common)
        self.transform_overrides = dict(transform)

    def train_transform(self, spec: DatasetSpec, image_size: int, channels: int) -> TwoViewTransform:
        """The views of every image from :attr:`view_transform`, in the data's format.

        Raises:
            ValueError: ``transform`` holds an argument the transform refuses.
        """
        options = self.view_options(channels)
        try:
            return lightly_two_view_transform(
                self.view_transform, spec, image_size, channels, self.small_image_recipe, **options
            )
        except TypeError as err:
            raise ValueError(f"transform of {type(self).__name__}: {err}") from None

    def view_options(self, channels: int) -> dict[str, Any]:
        """Keyword arguments of :attr:`view_transform` beyond the data's format: the overrides."""
        return dict(self.transform_overrides)


class TwoViewMethod(MultiViewMethod):
    """Base of the contrastive and self-distillation baselines: a frozen summary MLP, ``"proj"``.

    Subclasses build ``self.projection_head`` (input width ``encoder.pooled_dim``) besides
    what :class:`MultiViewMethod` asks for. They train the backbone alone, with lightly's
    CIFAR-10 recipe.
    """

    recipe = LIGHTLY_CIFAR10
    trains_summary = False
    extra_positions = ("proj",)
    projection_head: nn.Module

    def extra_features(self, encoded: EncoderOutput) -> dict[str, Tensor]:
        """``"proj"``: the projection head's output on the pooled features."""
        return {"proj": self.projection_head(encoded.pooled)}
