"""``DataInfo``: what a method needs to know about the data it will train on."""

from __future__ import annotations

from dataclasses import dataclass

from eval.data.datasets import DatasetSpec

__all__ = ["DataInfo"]


@dataclass(frozen=True)
class DataInfo:
    """What a method builder needs to know about the data it will train on.

    Attributes:
        spec: The dataset's spec (name, normalisation, flip, ...).
        image_size: Side of the model's inputs.
        channels: Channels of the model's inputs.
        num_classes: Classes (online classifier, kNN check).
        train_size: Images in the training split (after ``data.limit_train``).
    """

    spec: DatasetSpec
    image_size: int
    channels: int
    num_classes: int
    train_size: int
