"""Data sources for pretraining and evaluation, offline first.

One registry (:data:`DATASETS`) says, per dataset name, everything the rest of the harness needs
to know: native size, channels, classes, normalisation, whether a horizontal flip makes sense,
the default training size and the split names. :func:`load_dataset` turns a name into a torch
``Dataset`` of ``(image, label)`` pairs; :func:`make_transform` builds the one-view training
transform (DIM needs a single view per image) or the deterministic evaluation transform.

Where each dataset comes from, in order of preference (no network unless ``download=True``):

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), split 1,437/360, stratified
  and seeded. Always there: the default for tests and quick runs.
- ``fashion-mnist``: torchvision's ``FashionMNIST`` under the data root, then the gzipped IDX
  files of Debian's ``dataset-fashion-mnist`` package (read in place, never copied), then a
  torchvision download when ``download=True``.
- ``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``stl10``: torchvision's datasets under the
  data root (downloaded only when ``download=True``).
- ``imagefolder:PATH``: torchvision's ``ImageFolder`` on ``PATH/<split>`` (``val`` stands in for
  ``test``), or on ``PATH`` itself when it has no split folders.

The data root is the ``root`` argument, else ``$DIM_SSL_DATA``, else ``~/.cache/dim-ssl/data``.
A dataset that cannot be found raises :class:`DatasetNotFoundError`, whose message lists the
places looked in and the ways to get it.

Example::

    from torch.utils.data import DataLoader
    from eval.data import load_dataset

    train = load_dataset("digits", "train", train_transform=True)   # 1 x 32 x 32, augmented
    loader = DataLoader(train, batch_size=128, shuffle=True)        # default collate works
    for images, labels in loader:
        ...
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from dim_ssl.suggest import did_you_mean
from eval.errors import DatasetNotFoundError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetSpec",
    "ImageArrayDataset",
    "InputFormat",
    "StagedTransform",
    "dataset_labels",
    "dataset_spec",
    "default_data_root",
    "load_dataset",
    "make_transform",
    "prepare_in_memory",
    "read_idx",
]

# Where Debian's package `dataset-fashion-mnist` puts the four gzipped IDX files. A module
# constant so tests (and unusual installs) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DATA_ROOT_ENV = "DIM_SSL_DATA"
DIGITS_TEST_SIZE = 360  # 1,797 images -> 1,437 train / 360 test (about 80/20)
DIGITS_SPLIT_SEED = 0  # fixed, so every run and every process sees the same split

IMAGEFOLDER_PREFIX = "imagefolder:"

# The split name of images carved out of the training split (``load_dataset(..., holdout=N)``).
HOLDOUT_SPLIT = "holdout"
HOLDOUT_SEED = 20181001  # fixed: every run carves the same validation images

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """What the harness needs to know about one dataset, in one place.

    Attributes:
        name: The registry name (``"digits"``, ``"fashion-mnist"``, ``"imagefolder:PATH"``, ...).
        image_size: Native side length in pixels; ``None`` when images vary (image folders).
        channels: Native number of channels (1 or 3).
        num_classes: Number of classes; ``None`` when not known without reading the data.
        mean: Per-channel mean of the native images in [0, 1], for normalisation.
        std: Per-channel standard deviation of the native images in [0, 1].
        hflip: Whether a horizontal flip keeps an image in its class (not for digits).
        default_image_size: Size the models see unless told otherwise (32: every timm CNN and
            the paper's encoder work at 32x32, and it is cheap on a CPU).
        splits: The split names :func:`load_dataset` accepts.
        fit: How an image reaches the requested size: ``"resize"`` (bilinear), ``"pad"``
            (zero padding around the native image when the margin is small, e.g. 28 -> 32 as
            LeNet did for MNIST, so pixels stay exact; resize otherwise), or ``"resize_crop"``
            (short side resized, then a centre crop: for natural images of any aspect ratio).
    """

    name: str
    image_size: int | None
    channels: int
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    default_image_size: int = 32
    splits: tuple[str, ...] = ("train", "test")
    fit: str = "resize"


# Normalisation statistics are the usual published per-channel values of each training set.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", 8, 1, 10, (0.3053,), (0.3760,), hflip=False),
        DatasetSpec("fashion-mnist", 28, 1, 10, (0.2860,), (0.3530,), hflip=True, fit="pad"),
        DatasetSpec("mnist", 28, 1, 10, (0.1307,), (0.3081,), hflip=False, fit="pad"),
        DatasetSpec("cifar10", 32, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), hflip=True),
        DatasetSpec("cifar100", 32, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), hflip=True),
        # SVHN: house numbers are digits; a flip turns a 2 into something else.
        DatasetSpec(
            "svhn",
            32,
            3,
            10,
            (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            hflip=False,
            splits=("train", "test", "extra"),
        ),
        DatasetSpec(
            "stl10",
            96,
            3,
            10,
            (0.4467, 0.4398, 0.4066),
            (0.2603, 0.2566, 0.2713),
            hflip=True,
            splits=("train", "test", "unlabeled", "train+unlabeled"),
        ),
    )
}

# torchvision class per registry name, and whether it takes `split=` (else `train=`).
_TORCHVISION = {
    "fashion-mnist": ("FashionMNIST", False),
    "mnist": ("MNIST", False),
    "cifar10": ("CIFAR10", False),
    "cifar100": ("CIFAR100", False),
    "svhn": ("SVHN", True),
    "stl10": ("STL10", True),
}


def known_datasets() -> list[str]:
    """The registry names, plus the ``imagefolder:PATH`` form."""
    return sorted(DATASETS) + [IMAGEFOLDER_PREFIX + "PATH"]


def default_data_root() -> Path:
    """The data root: ``$DIM_SSL_DATA`` if set, else ``~/.cache/dim-ssl/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dim-ssl" / "data"


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` for a dataset name.

    Raises:
        ValueError: The name is not known; the message lists the known names.
    """
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
        return DatasetSpec(
            name,
            None,
            3,
            _count_classes(path),
            _IMAGENET_MEAN,
            _IMAGENET_STD,
            hflip=True,
            splits=("train", "test"),
            fit="resize_crop",
        )
    try:
        return DATASETS[name]
    except KeyError:
        known = known_datasets()
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known)}{did_you_mean(name, known)}") from None


def _count_classes(path: Path) -> int | None:
    # Cheap: one directory listing. Looks inside train/ when the folder is split.
    for folder in (path / "train", path):
        if folder.is_dir():
            classes = [p for p in folder.iterdir() if p.is_dir()]
            if classes:
                return len(classes)
    return None


# --------------------------------------------------------------------------------------------
# Transforms


def make_transform(
    spec: DatasetSpec,
    image_size: int | None = None,
    channels: int | None = None,
    train: bool = False,
    crop: bool = True,
    flip: bool | None = None,
) -> Callable[[Any], torch.Tensor]:
    """The transform from a raw image (PIL image or uint8/float tensor) to a model input.

    Output: a float32 tensor (``channels``, ``image_size``, ``image_size``) normalised with the
    spec's mean and std. The evaluation transform (``train=False``) is deterministic: change of
    channels, resize or pad to size, normalise. The training transform adds light augmentation
    for DIM, one view per image: a random crop with zero padding of ``image_size // 8`` pixels
    (``crop``) and a random horizontal flip (``flip``, by default where ``spec.hflip`` says it
    makes sense).

    Args:
        spec: The dataset's spec.
        image_size: Output side length; default ``spec.default_image_size``.
        channels: 1 or 3; default ``spec.channels``. Grayscale to 3 repeats the channel;
            colour to 1 takes the luminance (mean and std follow the same weights, an
            approximation for the std).
        train: Training (augmented) or evaluation (deterministic) transform.
        crop: Random crop with padding (training only).
        flip: Random horizontal flip (training only); ``None`` follows ``spec.hflip``.

    Raises:
        ValueError: ``channels`` is not 1 or 3, or ``image_size`` is not positive.
    """

    input_format = InputFormat.of(spec, image_size, channels)
    size, mean, std = input_format.size, input_format.mean, input_format.std
    augment: list[Any] = []
    if train:
        if crop:
            augment.append(v2.RandomCrop(size, padding=max(size // 8, 1)))
        if spec.hflip if flip is None else flip:
            augment.append(v2.RandomHorizontalFlip())
    normalize = [v2.Normalize(mean=list(mean), std=list(std)), v2.ToPureTensor()]
    if not augment:  # deterministic from start to end: all of it can be computed once
        return StagedTransform(v2.Compose(input_format.steps() + normalize))
    # Normalised after the crop, so that its zero padding is black, not the mean.
    return StagedTransform(v2.Compose(input_format.steps() + [v2.ToPureTensor()]), v2.Compose(augment + normalize))


class StagedTransform:
    """A transform in two stages: ``fixed``, the same for every call, then ``random``.

    Called on one image it applies both. An in-memory dataset (:class:`ImageArrayDataset`)
    applies ``fixed`` once to all its images together, as one batched tensor operation, and
    then only ``random`` per item: the format change (to float, channels, size), and for a
    deterministic transform everything, is then not recomputed for every image of every epoch.
    ``fixed`` must therefore accept a batch (N, C, H, W) and treat its images independently
    (torchvision's v2 tensor transforms do) and draw nothing at random.

    Args:
        fixed: Raw image tensor (C, H, W) or batch (N, C, H, W) -> model format.
        random: The per-call rest (augmentation, views); ``None`` when there is none.
    """

    def __init__(self, fixed: Callable[[Any], Any], random: Callable[[Any], Any] | None = None) -> None:
        self.fixed = fixed
        self.random = random

    def __call__(self, image: Any) -> Any:
        prepared = self.fixed(image)
        return prepared if self.random is None else self.random(prepared)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fixed={self.fixed}, random={self.random})"


@dataclass(frozen=True)
class InputFormat:
    """A dataset's images as a model's input: side, channels and the normalisation of both.

    The common start of every transform (DIM's, the probes', SimCLR's and MoCo's views).
    """

    spec: DatasetSpec
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, spec: DatasetSpec, image_size: int | None = None, channels: int | None = None) -> "InputFormat":
        """``image_size`` and ``channels`` default to the spec's.

        Raises:
            ValueError: ``channels`` is not 1 or 3, or ``image_size`` is not positive.
        """
        size = spec.default_image_size if image_size is None else int(image_size)
        out_channels = spec.channels if channels is None else int(channels)
        if size < 1:
            raise ValueError(f"image_size must be positive; got {image_size}")
        if out_channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        mean, std = _channel_stats(spec, out_channels)
        return cls(spec, size, out_channels, mean, std)

    def steps(self) -> list[Any]:
        """torchvision v2 steps from a raw image to a float tensor in [0, 1] of this format
        (not normalised): to float, to ``channels``, resized or padded to ``size``."""

        steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if self.channels != self.spec.channels:
            # Grayscale on a 1-channel image repeats it; on a 3-channel image it takes luminance.
            steps.append(v2.Grayscale(num_output_channels=self.channels))
        return steps + _fit_steps(self.spec, self.size)


def _channel_stats(spec: DatasetSpec, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == spec.channels:
        return spec.mean, spec.std
    if channels == 3:  # grayscale repeated: same statistics on every channel
        return spec.mean * 3, spec.std * 3
    weights = (0.299, 0.587, 0.114)  # the luminance weights Grayscale uses
    mean = sum(w * m for w, m in zip(weights, spec.mean))
    std = sum(w * s for w, s in zip(weights, spec.std))
    return (mean,), (std,)


def _fit_steps(spec: DatasetSpec, size: int) -> list[Any]:

    native = spec.image_size
    if native == size:
        return []
    if spec.fit == "resize_crop" or native is None:
        return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if spec.fit == "pad" and native < size <= native + native // 4:
        left = (size - native) // 2
        right = size - native - left
        return [v2.Pad([left, left, right, right], fill=0)]
    return [v2.Resize((size, size), antialias=True)]


# --------------------------------------------------------------------------------------------
# Datasets


# Prepared (format-changed) images an in-memory dataset may hold, and the batch it prepares at once.
PREPARED_MAX_BYTES = 2 << 30
PREPARE_CHUNK = 4096


class ImageArrayDataset(Dataset):
    """Images held in one tensor, labels in another: the in-memory datasets' common form.

    Attributes:
        images: uint8 (N, C, H, W) with values 0..255, or float (N, C, H, W) in [0, 1].
        targets: int64 (N,) labels.
        transform: Applied to each image tensor (C, H, W); ``None`` returns it unchanged.
        classes: Class names, if known.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(
                f"expected images (N, C, H, W) and N targets; got images of shape "
                f"{tuple(images.shape)} and {len(targets)} targets"
            )
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        # Rows whose fixed stage is computed already (see prepare): row of index i, or -1.
        self._prepared: torch.Tensor | None = None
        self._prepared_row = torch.full((len(self.targets),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        transform = self.transform
        row = int(self._prepared_row[index])
        if row >= 0 and isinstance(transform, StagedTransform):
            image = self._prepared[row]  # type: ignore[index]
            if transform.random is not None:
                image = transform.random(image)
        else:
            image = self.images[index]
            if transform is not None:
                image = transform(image)
        return image, int(self.targets[index])

    def prepare(self, indices: Sequence[int] | None = None, max_bytes: int = PREPARED_MAX_BYTES) -> bool:
        """Computes the fixed stage of a :class:`StagedTransform` once for the given images.

        Batched, in chunks; later ``dataset[i]`` for those images applies only the random
        stage, with the same result as before. Does nothing (and returns ``False``) for other
        transforms, or when the prepared images would take more than ``max_bytes``.

        Args:
            indices: The images that will be read (all by default).
            max_bytes: Memory the prepared images may take.
        """
        if not isinstance(self.transform, StagedTransform):
            return False
        chosen = torch.arange(len(self)) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
        if len(chosen) == 0:
            return False
        first = self.transform.fixed(self.images[chosen[:1]])
        if first.element_size() * first[0].numel() * len(chosen) > max_bytes:
            return False
        chunks = [self.transform.fixed(self.images[part]) for part in chosen.split(PREPARE_CHUNK)]
        self._prepared = torch.cat([chunk.as_subclass(torch.Tensor) for chunk in chunks])
        self._prepared_row = torch.full((len(self),), -1, dtype=torch.long)
        self._prepared_row[chosen] = torch.arange(len(chosen))
        return True


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    train_transform: bool = False,
    transform: Callable[[Any], Any] | None = None,
    download: bool = False,
    limit: int | None = None,
    limit_seed: int | None = None,
    crop: bool = True,
    flip: bool | None = None,
    holdout: int | None = None,
) -> Dataset:
    """A torch ``Dataset`` of ``(image, label)`` pairs for a dataset name.

    Args:
        name: A name from :data:`DATASETS` or ``"imagefolder:PATH"``.
        split: One of the spec's splits (``"train"``/``"test"``; svhn and stl10 have more).
        root: Data root; default :func:`default_data_root`.
        image_size, channels: Output size and channels; default from the spec.
        train_transform: Use the augmented training transform instead of the evaluation one.
        transform: A transform of your own, replacing the built one (it receives a uint8 or
            float tensor (C, H, W) for in-memory datasets, a PIL image for image folders).
        download: Let torchvision download a missing dataset (needs a network).
        limit: Keep only this many items (tiny CI runs): the first ``limit``, or a random
            subset when ``limit_seed`` is given.
        limit_seed: Seed of the random subset.
        crop, flip: Passed to :func:`make_transform` for the training transform.
        holdout: Carve this many images out of the training split (a fixed random choice, the
            same in every run): ``split="holdout"`` gives them, ``split="train"`` the rest. A
            validation split for choosing a recipe without reading the test set.

    Raises:
        ValueError: Unknown name or split, a non-positive ``limit``, or a ``holdout`` that
            does not leave images on both sides.
        DatasetNotFoundError: The dataset is not on this machine and was not downloaded.
    """
    spec = dataset_spec(name)
    if split == HOLDOUT_SPLIT and not holdout:
        raise ValueError(f"split {HOLDOUT_SPLIT!r} is carved from the training split: give holdout=N images")
    if holdout and split not in ("train", HOLDOUT_SPLIT):
        raise ValueError(f"holdout carves the training split; split {split!r} has nothing to carve")
    source_split = "train" if split == HOLDOUT_SPLIT else split
    if source_split not in spec.splits:
        raise ValueError(f"{name} has splits {', '.join(spec.splits)}; got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items; got {limit}")
    if transform is None:
        transform = make_transform(
            spec,
            image_size=image_size,
            channels=channels,
            train=train_transform,
            crop=crop,
            flip=flip,
        )
    data_root = Path(root).expanduser() if root is not None else default_data_root()

    if name == "digits":
        dataset: Dataset = _load_digits(source_split, transform)
    elif name.startswith(IMAGEFOLDER_PREFIX):
        dataset = _load_imagefolder(spec, source_split, transform)
    elif name == "fashion-mnist":
        dataset = _load_fashion_mnist(source_split, data_root, transform, download)
    else:
        dataset = _load_torchvision(spec, source_split, data_root, transform, download)
    if holdout:
        dataset = _carve(dataset, holdout, keep_holdout=split == HOLDOUT_SPLIT)
    dataset = _limit(dataset, limit, limit_seed)
    prepare_in_memory(dataset)
    return dataset


def dataset_missing(name: str, root: str | os.PathLike | None = None, download: bool = False) -> str | None:
    """Why ``name`` cannot be loaded on this machine (the :class:`DatasetNotFoundError`'s message,
    which says how to get it), or None when it can (after a download, when ``download`` is set).

    Reads the training split once (Fashion-MNIST: about a second), so call it once per run.
    """
    try:
        load_dataset(name, "train", root=root, transform=_unchanged, download=download, limit=1)
    except DatasetNotFoundError as err:
        return str(err)
    return None


def _unchanged(image: Any) -> Any:
    return image


def prepare_in_memory(dataset: Dataset) -> bool:
    """:meth:`ImageArrayDataset.prepare` for the images a dataset (or a ``Subset`` of one) reads."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return isinstance(dataset, ImageArrayDataset) and dataset.prepare(indices)


def _carve(dataset: Dataset, holdout: int, keep_holdout: bool) -> Subset:
    """The ``holdout`` images of a fixed random choice, or the rest of the dataset."""
    size = len(dataset)
    if not 0 < holdout < size:
        raise ValueError(f"holdout must leave images on both sides: 1 to {size - 1} of {size}; got {holdout}")
    # A fixed seed, not the run's: every run and every probe must carve the same images.
    order = torch.randperm(size, generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
    return Subset(dataset, sorted(order[:holdout] if keep_holdout else order[holdout:]))


def _limit(dataset: Dataset, limit: int | None, seed: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    if seed is None:
        indices = list(range(limit))
    else:
        generator = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:limit].tolist())
    return Subset(dataset, indices)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """All labels of a dataset as an int64 array, without decoding images where possible.

    Reads ``targets`` (torchvision's MNIST/CIFAR/ImageFolder and :class:`ImageArrayDataset`)
    or ``labels`` (SVHN, STL10), follows ``Subset`` indices, and falls back to iterating.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("targets", "labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            if isinstance(labels, torch.Tensor):
                labels = labels.numpy()
            return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


# ---- digits


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:

    digits = load_digits()
    # Values are 0..16: scale exactly to [0, 1] floats (8x8x1797 floats is tiny).
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8)
    targets = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)),
        test_size=DIGITS_TEST_SIZE,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return images, targets, {"train": train_idx, "test": test_idx}


def _load_digits(split: str, transform: Callable | None) -> ImageArrayDataset:
    images, targets, splits = _digits_arrays()
    index = torch.from_numpy(splits[split])
    return ImageArrayDataset(images[index], targets[index], transform, classes=[str(d) for d in range(10)])


# ---- fashion-mnist


_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(split: str, data_root: Path, transform: Callable | None, download: bool) -> ImageArrayDataset:

    train = split == "train"
    looked: list[str] = []

    # 1. torchvision's layout under the data root (root/FashionMNIST/raw/...).
    tv_folder = data_root / "FashionMNIST"
    looked.append(f"{tv_folder / 'raw'} (torchvision's FashionMNIST layout under the data root)")
    try:
        tv = datasets.FashionMNIST(str(data_root), train=train, download=False)
        return _from_mnist_like(tv.data, tv.targets, transform, _FASHION_CLASSES)
    except RuntimeError:
        pass  # not there: try the next source

    # 2. Debian's package, read in place (it is read-only and shared; no copy).
    debian = Path(DEBIAN_FASHION_MNIST_DIR)
    looked.append(f"{debian} (Debian package dataset-fashion-mnist)")
    image_stem, label_stem = _idx_files(split)
    image_path, label_path = _find_idx(debian, image_stem), _find_idx(debian, label_stem)
    if image_path is not None and label_path is not None:
        images, labels = _read_idx_pair(str(image_path), str(label_path))
        return _from_mnist_like(images, labels, transform, _FASHION_CLASSES)

    # 3. torchvision's download, only when asked for.
    if download:
        try:
            tv = datasets.FashionMNIST(str(data_root), train=train, download=True)
        except Exception as err:  # network errors come in many types; all mean "not found"
            raise _not_found("fashion-mnist", looked, data_root, download_failed=err) from err
        return _from_mnist_like(tv.data, tv.targets, transform, _FASHION_CLASSES)
    raise _not_found("fashion-mnist", looked, data_root)


def _from_mnist_like(
    images: torch.Tensor, labels: torch.Tensor, transform: Callable | None, classes: list[str]
) -> ImageArrayDataset:
    return ImageArrayDataset(images.unsqueeze(1), labels, transform, classes=classes)


@lru_cache(maxsize=2)
def _read_idx_pair(image_path: str, label_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached: decompressing 60,000 images takes a noticeable fraction of a second and tests
    # and runs ask for the same split more than once. The tensors are never written to.
    images = torch.from_numpy(read_idx(image_path))
    labels = torch.from_numpy(read_idx(label_path).astype(np.int64))
    if len(images) != len(labels):
        raise ValueError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    return images, labels


# IDX type codes (the third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped (``.gz``) or not, into a numpy array.

    Format: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
    uint32 sizes, then the data in row-major order.

    Raises:
        ValueError: The file is not a valid IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes of data); "
            f"the file holds {len(raw) - offset}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    # Native byte order and writable memory: torch.from_numpy needs both.
    return data.astype(dtype.newbyteorder("="), copy=True)


# ---- other torchvision datasets


def _load_torchvision(
    spec: DatasetSpec, split: str, data_root: Path, transform: Callable | None, download: bool
) -> ImageArrayDataset:

    class_name, takes_split = _TORCHVISION[spec.name]
    kwargs: dict[str, Any] = {"split": split} if takes_split else {"train": split == "train"}
    looked = [f"{data_root} (torchvision's {class_name} layout under the data root)"]
    try:
        tv = getattr(datasets, class_name)(str(data_root), download=download, **kwargs)
    except RuntimeError as err:
        # torchvision signals a missing or corrupt dataset with RuntimeError.
        raise _not_found(spec.name, looked, data_root, download_failed=err if download else None) from err
    except Exception as err:
        if not download:
            raise
        raise _not_found(spec.name, looked, data_root, download_failed=err) from err

    # Wrap the arrays torchvision holds in memory (no copy): uniform tensors, fast transforms.
    if class_name in ("MNIST", "FashionMNIST"):
        return _from_mnist_like(tv.data, tv.targets, transform, list(tv.classes))
    data = torch.from_numpy(np.asarray(tv.data))
    if class_name in ("CIFAR10", "CIFAR100"):
        images, labels = data.permute(0, 3, 1, 2), tv.targets  # stored (N, H, W, C)
    else:  # SVHN and STL10 store (N, C, H, W) and `labels` (-1 for STL10's unlabeled part)
        images, labels = data, tv.labels
    return ImageArrayDataset(
        images, torch.as_tensor(np.asarray(labels)), transform, classes=getattr(tv, "classes", None)
    )


def _load_imagefolder(spec: DatasetSpec, split: str, transform: Callable | None) -> Dataset:

    path = Path(spec.name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
    candidates = [path / split] + ([path / "val"] if split == "test" else [])
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        if not path.is_dir():
            raise DatasetNotFoundError(
                f"{spec.name}: folder {path} not found. Point imagefolder: at a folder with one "
                f"subfolder of images per class, or with {split}/ holding such subfolders."
            )
        warnings.warn(
            f"{path} has no {split}/ folder: the whole folder serves as the {split} split",
            stacklevel=3,
        )
        folder = path
    return datasets.ImageFolder(str(folder), transform=transform)


def _not_found(
    name: str, looked: list[str], data_root: Path, download_failed: BaseException | None = None
) -> DatasetNotFoundError:
    ways = [
        f"put it under the data root {data_root} (pass root=... or set ${DATA_ROOT_ENV})",
    ]
    if name == "fashion-mnist":
        ways.append(
            "install Debian's package: apt-get install dataset-fashion-mnist "
            f"(it puts the files in {DEBIAN_FASHION_MNIST_DIR})"
        )
    ways.append("pass download=True where a network is available (torchvision downloads it)")
    message = f"dataset {name!r} not found. Looked in:\n" + "".join(f"  - {p}\n" for p in looked)
    if download_failed is not None:
        message += f"The download failed: {download_failed}\n"
    message += "Ways to get it:\n" + "".join(f"  - {w}\n" for w in ways)
    message += "The 'digits' dataset (scikit-learn's, always installed) needs none of this."
    return DatasetNotFoundError(message)
