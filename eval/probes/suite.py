"""Probing frozen features: the labelled splits a probe reads, and the probes run alike on any model.

Every number in ``dim-ssl compare``, ``evaluate`` and ``transfer`` comes from here, so every
method, the random-init encoder and the raw pixels are measured the same way:

1. :func:`probe_data`: a dataset's training and test splits with the *evaluation* transform
   (no augmentation), at the image size and channels the model takes;
2. :func:`model_features`: the model's frozen features of both splits at one or more
   positions (:func:`eval.probes.features.extract_features`, cached on disk per checkpoint);
3. :func:`run_probes`: the weighted kNN probe (:func:`eval.probes.knn.knn_accuracy`, FAISS, cosine,
   Wu et al. 2018), the linear probe (:func:`eval.probes.linear.linear_probe`, L-BFGS
   logistic regression with its weight decay chosen on a held-out part of the training
   split) and, when asked for, the DIM paper's MLP probe (:func:`eval.probes.mlp.mlp_probe`, one
   hidden layer of 200 units, early-stopped on the same held-out part) on those features: train
   on the training split, report top-1 accuracy on the test split.

Example::

    data = probe_data("digits", image_size=32, channels=1)
    model = model_from_checkpoint("runs/quickstart/checkpoints/last.ckpt")
    for position, (train, test) in model_features(model, data, ("pool", "conv")).items():
        print(position, run_probes(train, test, ProbeSettings()))   # {'knn_acc': .., 'linear_acc': ..}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset

from eval.data import HOLDOUT_SPLIT, dataset_spec, load_dataset
from eval.probes.features import FeatureArrays, extract_features, feature_cache_key, raw_pixel_features
from eval.probes.knn import knn_accuracy
from eval.probes.linear import DEFAULT_L2_GRID, check_l2_grid, linear_probe
from eval.probes.mlp import mlp_probe

__all__ = [
    "PROBES",
    "ProbeData",
    "ProbeSettings",
    "feature_dim",
    "format_accuracies",
    "input_format",
    "model_features",
    "pixel_features",
    "probe_data",
    "probe_threads",
    "run_folder",
    "run_probes",
]

#: The probes, by name, and the column each one fills.
PROBES: dict[str, str] = {"knn": "knn_acc", "linear": "linear_acc", "mlp": "mlp_acc"}

#: Feature extraction and probes on at most this many images run on one CPU thread. Their ops
#: are small (an L-BFGS step on 1,437 x 512 features, a forward of 256 32x32 images), and on a
#: 2-core machine that anything else keeps busy a second intra-op thread makes them wait on
#: each other: measured on the digits splits, extraction 6 s on one thread against 31 s on
#: two, the linear probe 3 s against 55 s. Larger sets keep torch's own thread count.
SMALL_PROBE_IMAGES = 20_000


@contextlib.contextmanager
def probe_threads(images: int) -> Iterator[None]:
    """One CPU thread (torch, OpenMP, BLAS) for work on up to :data:`SMALL_PROBE_IMAGES` images."""
    if images > SMALL_PROBE_IMAGES:
        yield
        return
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread and one BLAS/OpenMP thread inside the block.

    On a 2-core machine shared with other jobs, two spinning OpenMP/OpenBLAS threads made small
    problems up to 10x slower than one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ProbeSettings:
    """Which probes run, and their settings.

    Attributes:
        probes: Names from :data:`PROBES` (``"knn"``, ``"linear"``, ``"mlp"``).
        knn_k: Neighbours of the kNN vote (200 in Wu et al. and MoCo; clipped to the
            training-set size).
        knn_temperature: Temperature of the ``exp(sim / T)`` vote weights.
        seed: Seed of the linear and MLP probes' held-out split (the linear probe's only
            randomness; the MLP probe's weights, batch order and dropout too).
        linear_l2_grid: The weight decays the linear probe chooses from on its held-out split;
            ``None``: :data:`eval.probes.linear.DEFAULT_L2_GRID`. On 60,000 x 4,096 features
            each weak-decay fit takes minutes on one thread, and a shorter grid saves them.

    Raises:
        ValueError: An unknown or repeated probe, none at all, ``knn_k < 1`` or a
            non-positive temperature.
    """

    probes: tuple[str, ...] = ("knn", "linear")
    knn_k: int = 200
    knn_temperature: float = 0.1
    seed: int = 0
    # Left out of repr, which keys the probe cache: with the default grid the key stays what it
    # was before this setting existed; _probe_cache_path adds a grid that is set.
    linear_l2_grid: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        probes = tuple(self.probes)
        object.__setattr__(self, "probes", probes)
        if self.linear_l2_grid is not None:
            try:
                grid = tuple(check_l2_grid(self.linear_l2_grid))
            except ValueError:
                raise ValueError(
                    f"linear_l2_grid must be a list of one or more weight decays > 0 (or null for the default "
                    f"{list(DEFAULT_L2_GRID)}); got {self.linear_l2_grid!r}"
                ) from None
            object.__setattr__(self, "linear_l2_grid", grid)
        unknown = [p for p in probes if p not in PROBES]
        if not probes or unknown or len(set(probes)) != len(probes):
            raise ValueError(f"probes must be one or more of {', '.join(PROBES)} (no repeats); got {list(probes)}")
        if isinstance(self.knn_k, bool) or int(self.knn_k) != self.knn_k or self.knn_k < 1:
            raise ValueError(f"knn_k must be a whole number >= 1; got {self.knn_k!r}")
        if not self.knn_temperature > 0:
            raise ValueError(f"knn_temperature must be positive; got {self.knn_temperature!r}")

    @property
    def columns(self) -> list[str]:
        """The table columns these probes fill, in order (``knn_acc``, ``linear_acc``, ``mlp_acc``)."""
        return [PROBES[p] for p in self.probes]

    def table_columns(self, columns: Sequence[str]) -> list[str]:
        """``columns`` less the accuracy columns of the probes that do not run."""
        probe_columns = set(PROBES.values())
        return [c for c in columns if c not in probe_columns or c in self.columns]


@dataclass
class ProbeData:
    """The labelled splits a probe trains and tests on, in the model's input format.

    Attributes:
        dataset: Dataset name.
        train: Training split, evaluation transform.
        test: Test split, evaluation transform.
        image_size, channels: The input format (the model's).
        limit_train, limit_test: Items kept (the first N), or ``None`` for all.
        test_split: The split name of ``test``.
        class_names: Class names, if the dataset has them.
    """

    dataset: str
    train: Dataset
    test: Dataset
    image_size: int
    channels: int
    limit_train: int | None = None
    limit_test: int | None = None
    test_split: str = "test"
    class_names: list[str] | None = field(default=None)

    def cache_extra(self, split: str) -> dict[str, Any]:
        """What, besides checkpoint and dataset, makes this split's features what they are."""
        limit = self.limit_train if split == "train" else self.limit_test
        return {"image_size": self.image_size, "channels": self.channels, "limit": limit}

    def describe(self) -> str:
        return (
            f"{self.dataset} ({len(self.train)} train / {len(self.test)} {self.test_split}, "
            f"{self.channels}x{self.image_size}x{self.image_size})"
        )


def input_format(data_config: Mapping[str, Any]) -> tuple[int, int]:
    """``(image_size, channels)`` a model trained with this ``data`` section takes (its dataset's
    defaults where the section leaves them null)."""

    spec = dataset_spec(data_config["dataset"])
    return (
        int(data_config.get("image_size") or spec.default_image_size),
        int(data_config.get("channels") or spec.channels),
    )


def probe_data(
    dataset: str,
    image_size: int | None = None,
    channels: int | None = None,
    root: str | os.PathLike | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    test_split: str = "test",
    download: bool = False,
    holdout: int | None = None,
) -> ProbeData:
    """Both splits of ``dataset`` with the evaluation transform, at the given size and channels.

    ``limit_*`` keep the first N items (as ``data.limit_train`` does for pretraining). With
    ``holdout`` the test side is the carved validation split and the train side the rest of the
    training split (as ``data.holdout`` does for pretraining): the test split is not read.

    Raises:
        ValueError: Unknown dataset or split.
        eval.data.DatasetNotFoundError: The dataset is not on this machine.
    """

    spec = dataset_spec(dataset)
    size = int(image_size or spec.default_image_size)
    chans = int(channels or spec.channels)
    common = {"root": root, "image_size": size, "channels": chans, "download": download}
    if holdout:
        common["holdout"], test_split = holdout, HOLDOUT_SPLIT
    train = load_dataset(dataset, "train", limit=limit_train, **common)
    test = load_dataset(dataset, test_split, limit=limit_test, **common)
    base = getattr(train, "dataset", train)  # through a Subset
    classes = getattr(base, "classes", None)
    return ProbeData(
        dataset,
        train,
        test,
        size,
        chans,
        limit_train,
        limit_test,
        test_split,
        list(classes) if classes is not None else None,
    )


def model_features(
    model: Any,
    data: ProbeData,
    positions: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    cache_name: str | None = None,
    progress: bool = True,
) -> dict[str, tuple[FeatureArrays, FeatureArrays]]:
    """``{position: ((train_x, train_y), (test_x, test_y))}``: a model's frozen features of both splits.

    With ``cache_dir`` the features are cached per checkpoint file (``checkpoint``) or, for a
    model without one (the random-init encoder), per ``cache_name``, which must then name it
    completely (backbone, seed, ...).

    Raises:
        ValueError: ``cache_dir`` without ``checkpoint`` or ``cache_name``, or a position the
            model does not have.
    """
    positions = tuple(positions)
    known = getattr(model, "feature_positions", None)
    if known is not None:
        unknown = [p for p in positions if p not in known]
        if unknown:
            raise ValueError(f"{type(model).__name__} has no position {', '.join(unknown)}; it has {', '.join(known)}")
    if cache_dir is not None and checkpoint is None and not cache_name:
        raise ValueError(
            "caching features needs the checkpoint they come from (or a cache_name for a model without one)"
        )

    out: dict[str, list[FeatureArrays]] = {p: [] for p in positions}
    with probe_threads(len(data.train) + len(data.test)):
        _extract_both(model, data, positions, cache_dir, checkpoint, cache_name, progress, out)
    return {p: (out[p][0], out[p][1]) for p in positions}


def _extract_both(
    model: Any,
    data: ProbeData,
    positions: tuple[str, ...],
    cache_dir: Any,
    checkpoint: Any,
    cache_name: Any,
    progress: bool,
    out: dict[str, list[FeatureArrays]],
) -> None:
    for split, dataset in (("train", data.train), ("test", data.test)):
        key = None
        if cache_dir is not None:
            extra = data.cache_extra(split)
            if checkpoint is None:
                extra["model"] = cache_name
            name = split if split == "train" else data.test_split
            key = feature_cache_key(checkpoint, data.dataset, name, **extra)
        features = extract_features(
            model, dataset, positions=positions, cache_dir=cache_dir, cache_key=key, progress=progress
        )
        for position in positions:
            out[position].append(features[position])


def pixel_features(data: ProbeData, progress: bool = True) -> tuple[FeatureArrays, FeatureArrays]:
    """The raw-pixel baseline's features: both splits' normalised input images, flattened."""
    return raw_pixel_features(data.train, progress=progress), raw_pixel_features(data.test, progress=progress)


#: Bump when a probe's code changes what it returns: cached results of older code are not read.
PROBE_CACHE_VERSION = 1


def run_probes(
    train: FeatureArrays,
    test: FeatureArrays,
    settings: ProbeSettings,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Top-1 test accuracy of each probe of ``settings``, trained on ``train``.

    With ``cache_dir`` the result is kept on disk under a digest of the features' bytes and the
    settings, and read back when the same probes meet the same features again: a comparison
    continued with ``--reuse`` re-probes nothing it has probed (a linear probe of 10,000 x 4,096
    features takes minutes on one thread).

    Returns:
        ``{"knn_acc": ..., "linear_acc": ..., "mlp_acc": ...}`` (the probes asked for), plus
        ``linear_l2``, the weight decay the linear probe chose on its held-out split, and
        ``mlp_epoch``, the epoch the MLP probe chose on it.
    """
    (train_x, train_y), (test_x, test_y) = train, test
    path = None if cache_dir is None else _probe_cache_path(cache_dir, (train_x, train_y, test_x, test_y), settings)
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a damaged entry (an interrupted write): probe again and replace it
    with probe_threads(len(train_x) + len(test_x)):
        result = _probe(train_x, train_y, test_x, test_y, settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(result))
        partial.replace(path)  # atomic: a reader sees the whole entry or none
    return result


def _probe_cache_path(cache_dir: str | os.PathLike, arrays: Sequence[Any], settings: ProbeSettings) -> Path:
    grid = "" if settings.linear_l2_grid is None else f"|l2_grid={settings.linear_l2_grid!r}"
    digest = hashlib.sha256(f"v{PROBE_CACHE_VERSION}|{settings!r}{grid}".encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"|{array.dtype.str}{array.shape}|".encode())
        digest.update(array.data)
    return Path(cache_dir) / f"probes-{digest.hexdigest()[:24]}.json"


def _probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, settings: ProbeSettings) -> dict[str, Any]:

    result: dict[str, Any] = {}
    for probe in settings.probes:
        if probe == "knn":
            result["knn_acc"] = float(
                knn_accuracy(
                    train_x, train_y, test_x, test_y, k=int(settings.knn_k), temperature=float(settings.knn_temperature)
                )
            )
        elif probe == "linear":
            grid = settings.linear_l2_grid or DEFAULT_L2_GRID
            fitted = linear_probe(train_x, train_y, test_x, test_y, l2_grid=grid, seed=settings.seed)
            result["linear_acc"] = float(fitted.accuracy)
            result["linear_l2"] = float(fitted.l2)
        else:
            trained = mlp_probe(train_x, train_y, test_x, test_y, seed=settings.seed)
            result["mlp_acc"] = float(trained.accuracy)
            result["mlp_epoch"] = int(trained.epoch)
    return result


def format_accuracies(result: Mapping[str, Any]) -> str:
    """``kNN 0.912 | linear 0.934 | MLP 0.941`` for progress lines."""
    parts = []
    for key, name in (("knn_acc", "kNN"), ("linear_acc", "linear"), ("mlp_acc", "MLP")):
        if key in result:
            parts.append(f"{name} {result[key]:.3f}")
    return " | ".join(parts)


def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/last.ckpt`` -> ``RUN``)."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def feature_dim(features: tuple[FeatureArrays, FeatureArrays]) -> int:
    """Width of a set of features (for tables)."""
    (train_x, _), _ = features
    return int(np.asarray(train_x).shape[1]) if np.asarray(train_x).ndim == 2 else 0
