"""Frozen feature extraction for the probes, with an on-disk cache per checkpoint.

:func:`extract_features` runs any model that has ``features(x, position)`` (``TimmEncoder``,
``PaperEncoder``, the methods' LightningModules) over a dataset once, in evaluation mode and
without gradients, and returns float32 numpy arrays per position together with the labels.
The linear probe and the kNN probe then work on those arrays; with ``cache_dir`` they are
stored as ``.npz`` files keyed by checkpoint (path, size and modification time), dataset and
position, so probing a checkpoint again, or with another probe, does not re-extract.

:func:`raw_pixel_features` gives the raw-pixel baseline row: the flattened, normalised input
images, which any learned representation should beat.

Example::

    model = SimCLRModule.load_from_checkpoint(path, encoder=encoder)
    key = feature_cache_key(path, "fashion-mnist", "test")
    feats = extract_features(model, test_set, positions=("pool", "proj"),
                             cache_dir="runs/cache", cache_key=key)
    test_x, test_y = feats["pool"]
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from eval.probes.progress import Progress

__all__ = [
    "extract_features",
    "feature_cache_key",
    "feature_cache_path",
    "raw_pixel_features",
]

FeatureArrays = tuple[np.ndarray, np.ndarray]  # (features (N, F) float32, labels (N,) int64)


def feature_cache_key(
    checkpoint: str | os.PathLike | None,
    dataset: str,
    split: str,
    **extra: Any,
) -> str:
    """A cache key naming one checkpoint's features on one dataset split.

    The checkpoint enters by resolved path, size and modification time, so a checkpoint
    overwritten in place (a newer ``last.ckpt``) gets a new key and is re-extracted. Anything
    else that changes the features (``image_size=64``, ``channels=3``, ``limit=1000``) goes
    into ``extra``. The position is added by :func:`extract_features`.

    Args:
        checkpoint: Path of the checkpoint file; ``None`` for a model that has none (then the
            key holds only the dataset and ``extra``: pass something that names the model).
        dataset: Dataset name (``"fashion-mnist"``).
        split: Split name (``"train"``, ``"test"``).
        **extra: Further settings that change the features, in any order.

    Raises:
        FileNotFoundError: The checkpoint does not exist.
    """
    parts = []
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        stat = path.stat()  # FileNotFoundError names the path
        parts.append(f"checkpoint={path}|size={stat.st_size}|mtime_ns={stat.st_mtime_ns}")
    parts.append(f"dataset={dataset}|split={split}")
    parts += [f"{name}={extra[name]!r}" for name in sorted(extra)]
    return "|".join(parts)


def feature_cache_path(cache_dir: str | os.PathLike, cache_key: str, position: str) -> Path:
    """Where the features of ``cache_key`` at ``position`` are cached: a readable stem plus a
    hash of the full key (keys hold paths and can be long)."""
    full = f"{cache_key}|position={position}"
    digest = hashlib.sha256(full.encode()).hexdigest()[:20]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", position)[:40]
    return Path(cache_dir) / f"features-{readable}-{digest}.npz"


def _load_cached(path: Path, cache_key: str, position: str) -> FeatureArrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            # The stored key guards against a hash collision or a truncated stem.
            if str(data["key"]) != f"{cache_key}|position={position}":
                return None
            return data["features"], data["labels"]
    except (OSError, ValueError, KeyError):  # corrupt or foreign file: extract again
        return None


def _save_cached(path: Path, cache_key: str, position: str, features: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename: an interrupted run or two processes extracting
    # at once never leave a half-written file under the final name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=features, labels=labels, key=np.asarray(f"{cache_key}|position={position}"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _show_progress(progress: bool) -> bool:
    # A progress bar only where someone watches it: not in CI logs, not in pytest captures.
    return progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def _as_loader(data: Dataset | DataLoader, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def _batch_images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("expected batches (images, labels) from the dataset")
    images, labels = batch[0], batch[1]
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            "expected one image tensor per batch; got "
            f"{type(images).__name__} (a multi-view training transform? extract features from a "
            "dataset with the evaluation transform)"
        )
    return images, torch.as_tensor(labels)


def extract_features(
    model: nn.Module,
    data: Dataset | DataLoader,
    positions: Sequence[str] = ("pool",),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, FeatureArrays]:
    """Frozen features of a whole dataset at one or more positions of a model.

    The model runs in evaluation mode (BatchNorm on its running statistics, no dropout) and
    without gradients; every submodule's train/eval flag and the model's device are restored
    afterwards. One forward per batch serves all positions when the model has
    ``multi_features(x, positions)`` (the methods' LightningModules); otherwise
    ``features(x, position)`` is called once per position.

    Args:
        model: Anything with ``features(x, position) -> (N, ...)``.
        data: A dataset of ``(image, label)`` pairs (evaluation transform), or a DataLoader
            over one (its order is kept: do not shuffle it).
        positions: Feature positions, e.g. ``("pool",)`` or ``("conv", "fc", "y")``.
        batch_size: Images per forward (ignored when ``data`` is a DataLoader).
        device: Where to run; default CUDA when available, else CPU.
        cache_dir: Folder of the ``.npz`` cache; ``None`` disables caching.
        cache_key: What the features are of (see :func:`feature_cache_key`); required with
            ``cache_dir``.
        progress: Show a tqdm bar (only when stderr is a terminal).
        num_workers: DataLoader workers (ignored when ``data`` is a DataLoader).

    Returns:
        ``{position: (features (N, F) float32, labels (N,) int64)}``, features flattened
        after the batch dimension, in dataset order.

    Raises:
        ValueError: No positions, duplicate positions, ``cache_dir`` without ``cache_key``,
            a model without ``features``, or batches that are not ``(images, labels)``.
    """
    positions = tuple(positions)
    if not positions:
        raise ValueError("positions is empty; ask for at least one, e.g. ('pool',)")
    if len(set(positions)) != len(positions):
        raise ValueError(f"positions has duplicates: {positions}")
    if cache_dir is not None and not cache_key:
        raise ValueError(
            "cache_dir needs a cache_key naming the checkpoint and data "
            "(eval.probes.features.feature_cache_key(checkpoint, dataset, split))"
        )
    if not callable(getattr(model, "features", None)):
        raise ValueError(f"{type(model).__name__} has no features(x, position) method")

    results: dict[str, FeatureArrays] = {}
    if cache_dir is not None:
        for position in positions:
            cached = _load_cached(feature_cache_path(cache_dir, cache_key, position), cache_key, position)
            if cached is not None:
                results[position] = cached
    missing = [p for p in positions if p not in results]
    if missing:
        computed = _run(model, data, missing, batch_size, device, progress, num_workers)
        for position, (features, labels) in computed.items():
            if cache_dir is not None:
                _save_cached(feature_cache_path(cache_dir, cache_key, position), cache_key, position, features, labels)
            results[position] = (features, labels)
    return {p: results[p] for p in positions}


def _run(
    model: nn.Module,
    data: Dataset | DataLoader,
    positions: Sequence[str],
    batch_size: int,
    device: str | torch.device | None,
    progress: bool,
    num_workers: int,
) -> dict[str, FeatureArrays]:

    target = torch.device(device) if device is not None else _default_device()
    loader = _as_loader(data, batch_size, num_workers, pin_memory=target.type == "cuda")
    multi = getattr(model, "multi_features", None)

    # Remember each submodule's own flag (a model may keep parts in eval mode on purpose)
    # and the device, to hand the model back exactly as it came.
    modes = [(module, module.training) for module in model.modules()]
    original_device = _model_device(model)
    chunks: dict[str, list[np.ndarray]] = {p: [] for p in positions}
    labels: list[np.ndarray] = []
    try:
        model.eval()
        model.to(target)
        with torch.no_grad():
            bar = Progress(len(loader), f"features of {len(loader.dataset)} images", unit="batch", enabled=progress)
            for batch in loader:
                bar.update()
                images, batch_labels = _batch_images_and_labels(batch)
                images = images.to(target, non_blocking=True)
                if callable(multi):
                    out = multi(images, positions)
                else:
                    out = {p: model.features(images, p) for p in positions}
                for position in positions:
                    chunks[position].append(out[position].flatten(1).float().cpu().numpy())
                labels.append(batch_labels.cpu().numpy().astype(np.int64, copy=False))
            bar.close()
    finally:
        if original_device is not None:
            model.to(original_device)
        for module, mode in modes:
            module.training = mode

    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return {
        p: (
            np.concatenate(chunks[p]).astype(np.float32, copy=False)
            if chunks[p]
            else np.zeros((0, 0), dtype=np.float32),
            all_labels,
        )
        for p in positions
    }


def raw_pixel_features(
    data: Dataset | DataLoader,
    batch_size: int = 1024,
    progress: bool = True,
    num_workers: int = 0,
) -> FeatureArrays:
    """The raw-pixel baseline: every image flattened, ``(N, C*H*W)`` float32, with its labels.

    The images are what the dataset's transform gives (normalised, at the model's size), so
    the row measures what a probe can do with no representation learning at all.
    """

    loader = _as_loader(data, batch_size, num_workers, pin_memory=False)
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in tqdm(loader, desc="pixels", unit="batch", disable=not _show_progress(progress), leave=False):
        images, batch_labels = _batch_images_and_labels(batch)
        chunks.append(images.flatten(1).float().numpy())
        labels.append(batch_labels.numpy().astype(np.int64, copy=False))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(chunks).astype(np.float32, copy=False), np.concatenate(labels)
