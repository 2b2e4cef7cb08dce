"""Weighted k-nearest-neighbour probe on frozen features, searched with FAISS.

Follows the non-parametric classifier of Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (CVPR 2018), in the form used by the MoCo CIFAR
demo and by ``lightly.utils.benchmarking.knn_predict``:

1. L2-normalise train and test features, so inner product = cosine similarity;
2. for every test sample take its ``k`` most similar training samples;
3. weight each neighbour by ``exp(sim / temperature)``;
4. a class's score is the sum of the weights of the neighbours carrying that label;
5. the prediction is the class with the highest score.

The nearest-neighbour search is an exact FAISS inner-product index (``IndexFlatIP``), on
the GPU when the installed FAISS has GPU support and CUDA is available, else on the CPU.
The test set is searched in batches so that memory stays bounded by
``batch_size x max(k, num_classes)`` no matter how large the test set is.

For monitoring during training, :func:`leave_one_out_knn_accuracy` runs the same vote in
torch on one labelled split (each sample classified by all the others), with no FAISS index
and no training-set feature bank.

The input checks in this file are shared with :mod:`eval.probes.linear`: both
probes take the same four arrays and refuse the same mistakes.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "knn_accuracy",
    "knn_topk_accuracy",
    "knn_predict_scores",
    "check_probe_inputs",
    "leave_one_out_knn_accuracy",
]

# Test queries searched at once: bounds the (batch, k) neighbour arrays and the
# (batch, num_classes) score matrix; big enough that FAISS's per-call overhead is negligible.
DEFAULT_BATCH_SIZE = 4096

# faiss' GPU brute-force search supports at most this many neighbours per query.
_FAISS_GPU_MAX_K = 2048


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier of Wu et al. (2018).

    Args:
        train_x: Training (memory bank) features, shape (N, D): numpy array or torch tensor
            on any device.
        train_y: Integer training labels, shape (N,).
        test_x: Test features, shape (M, D).
        test_y: Integer test labels, shape (M,).
        k: Number of neighbours (200 in Wu et al. and MoCo); clipped to N.
        temperature: Temperature of the neighbour weights ``exp(sim / temperature)``.
        num_classes: Number of classes; default: the largest label seen plus one.
        batch_size: Test samples searched at once.

    Returns:
        The fraction of test samples whose highest-scoring class is their label.

    Raises:
        ValueError: On malformed inputs (see :func:`check_probe_inputs`), ``k < 1``,
            ``temperature <= 0``, ``batch_size < 1`` or labels outside ``num_classes``.

    Example:
        >>> acc = knn_accuracy(train_feats, train_labels, test_feats, test_labels)
    """
    return knn_topk_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        topk=(1,),
        batch_size=batch_size,
    )["top1"]


def knn_topk_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    topk: Sequence[int] = (1, 5),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """Top-k accuracies of the weighted kNN classifier of Wu et al. (2018).

    Same arguments as :func:`knn_accuracy`, plus ``topk``: the ``k`` of each top-k
    accuracy to report. A test sample counts as correct at top-t when its label is among
    the ``t`` highest-scoring classes.

    Returns:
        ``{"top1": ..., "top5": ...}``: one entry ``f"top{t}"`` per requested ``t`` that is
        smaller than the number of classes (top-5 of a 5-class problem would always be 1.0,
        so it is left out); ``"top1"`` is always present.
    """
    train_x, train_y, test_x, test_y = check_probe_inputs(train_x, train_y, test_x, test_y)
    num_classes = _resolve_num_classes(num_classes, train_y, test_y)
    ts = sorted({int(t) for t in topk} | {1})
    if ts[0] < 1:
        raise ValueError(f"topk values must be >= 1; got {tuple(topk)}")
    ts = [t for t in ts if t == 1 or t < num_classes]

    labels = test_y.cpu().numpy()
    hits = np.zeros(len(ts), dtype=np.int64)
    # Batch by batch, so that no (M, num_classes) matrix is ever held for a large test set.
    for start, stop, scores in _knn_score_batches(train_x, train_y, test_x, k, temperature, num_classes, batch_size):
        # Classes ranked by score; a stable sort breaks ties by class index, like argmax.
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, : max(ts)]
        found = ranked == labels[start:stop, None]
        hits += [int(found[:, :t].any(axis=1).sum()) for t in ts]
    return {f"top{t}": int(h) / len(labels) for t, h in zip(ts, hits)}


def knn_predict_scores(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Class scores of the weighted kNN classifier of Wu et al. (2018) for each test sample.

    Returns:
        float64 array of shape (M, num_classes). Each row is the weighted vote share of the
        classes: the sums of ``exp(sim / temperature)`` per class, divided by their total,
        so rows sum to one. The division rescales a whole row, so ``scores.argmax(1)`` is
        exactly the prediction of the unnormalised sums of Wu et al. and lightly's
        ``knn_predict``, without their overflow for small temperatures.
    """
    train_x, train_y, test_x, _ = check_probe_inputs(train_x, train_y, test_x, None)
    num_classes = _resolve_num_classes(num_classes, train_y, None)
    scores = np.empty((test_x.shape[0], num_classes), dtype=np.float64)
    for start, stop, batch_scores in _knn_score_batches(
        train_x, train_y, test_x, k, temperature, num_classes, batch_size
    ):
        scores[start:stop] = batch_scores
    return scores


def _knn_score_batches(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    batch_size: int,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The kNN vote (steps 1-4 of the module docstring) on checked inputs.

    Yields ``(start, stop, scores)`` for consecutive batches of test samples, ``scores``
    being the rows ``start:stop`` of :func:`knn_predict_scores`'s result.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (number of neighbours) must be an integer >= 1; got {k!r}")
    if not _is_real(temperature) or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")

    # FAISS wants C-contiguous float32 on the host.
    train = _l2_normalise(train_x.detach().cpu().numpy())
    test = _l2_normalise(test_x.detach().cpu().numpy())
    bank_labels = train_y.cpu().numpy()
    k = min(int(k), train.shape[0])  # cannot ask for more neighbours than exist

    index = _build_index(train, k)
    for start in range(0, test.shape[0], batch_size):
        stop = min(start + batch_size, test.shape[0])
        sims, idx = index.search(test[start:stop], k)  # (b, k), most similar first
        # exp(sim / T) with the row's largest similarity subtracted first: a per-row
        # factor that leaves the argmax unchanged but keeps exp() finite for tiny T.
        sims = sims.astype(np.float64)
        weights = np.exp((sims - sims[:, :1]) / temperature)
        # Sum of the weights per class: one scatter-add over the (b, k) neighbour labels.
        batch_scores = torch.zeros((stop - start, num_classes), dtype=torch.float64)
        batch_scores.scatter_add_(1, torch.from_numpy(bank_labels[idx]), torch.from_numpy(weights))
        batch_scores = batch_scores.numpy()
        yield start, stop, batch_scores / batch_scores.sum(axis=1, keepdims=True)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (cosine similarity = inner product), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Same floor as torch.nn.functional.normalize: an all-zero row stays all-zero.
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def _build_index(train: np.ndarray, k: int) -> faiss.Index:
    """Exact inner-product index over ``train``: on the GPU when FAISS and CUDA allow."""
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    if (
        hasattr(faiss, "StandardGpuResources")  # faiss-cpu builds lack the GPU API
        and torch.cuda.is_available()
        and faiss.get_num_gpus() > 0
        and k <= _FAISS_GPU_MAX_K
    ):
        # index_cpu_to_gpu keeps a reference to the resources in the returned index.
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, torch.cuda.current_device(), index)
    return index


def _resolve_num_classes(num_classes: int | None, train_y: torch.Tensor, test_y: torch.Tensor | None) -> int:
    """``num_classes`` checked against the labels, or inferred as the largest label + 1."""
    largest = int(train_y.max())
    if test_y is not None and test_y.numel() > 0:
        largest = max(largest, int(test_y.max()))
    if num_classes is None:
        return largest + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    if largest >= num_classes:
        raise ValueError(f"labels must lie in [0, num_classes={num_classes}); got a label {largest}")
    return int(num_classes)


# --- input checks shared by the probes -------------------------------------------------


def check_probe_inputs(
    train_x: Any, train_y: Any, test_x: Any, test_y: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checks the four arrays of a probe and returns them as torch tensors.

    Features become float32 tensors of shape (N, D) and (M, D), labels int64 tensors of
    shape (N,) and (M,); tensors keep their device (numpy arrays are wrapped without a
    copy where the dtype allows). ``test_y`` may be None (prediction without labels); it is
    then returned as None.

    Raises:
        ValueError: When features are not 2-D, train and test feature dimensions differ,
            features hold NaN or inf, labels are not 1-D non-negative integers, lengths
            of features and labels differ, or the training or test set is empty.
    """
    train_x = _as_features(train_x, "train_x")
    test_x = _as_features(test_x, "test_x")
    train_y = _as_labels(train_y, "train_y")
    test_y = None if test_y is None else _as_labels(test_y, "test_y")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            "train and test features must have the same dimension; got "
            f"train_x with {train_x.shape[1]} and test_x with {test_x.shape[1]} columns"
        )
    for x, y, name in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if y is not None and x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{name}_x and {name}_y must have the same length; got "
                f"{x.shape[0]} feature rows and {y.shape[0]} labels"
            )
        if x.shape[0] == 0:
            raise ValueError(f"the {name} set is empty; expected at least one sample")
    return train_x, train_y, test_x, test_y


def _as_tensor(a: Any, name: str) -> torch.Tensor:
    if a is None:
        raise ValueError(f"{name} is required; got None")
    if isinstance(a, torch.Tensor):
        return a.detach()
    try:
        return torch.as_tensor(np.asarray(a))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a numpy array or torch tensor; got {type(a).__name__} ({err})") from err


def _as_features(a: Any, name: str) -> torch.Tensor:
    t = _as_tensor(a, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (num_samples, feature_dim); got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in _INT_DTYPES or t.dtype == torch.bool):
        raise ValueError(f"{name} must hold real numbers; got dtype {t.dtype}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(f"{name} must hold finite values; got NaN or inf in {bad} of {t.shape[0]} rows")
    return t


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_labels(a: Any, name: str) -> torch.Tensor:
    t = _as_tensor(a, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer class labels; got shape {tuple(t.shape)}")
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must hold integer class labels; got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() > 0 and int(t.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0; got {int(t.min())}")
    return t


def leave_one_out_knn_accuracy(
    features: Tensor,
    labels: Tensor,
    k: int = 20,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of a weighted kNN vote where each sample is classified by all the others.

    The classifier of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination" (CVPR 2018), as in ``lightly.utils.benchmarking.knn_predict``: cosine
    similarity, the ``k`` most similar samples, each voting for its label with weight
    ``exp(sim / temperature)``. The sample itself is left out, so one labelled split is enough.

    Args:
        features: ``(N, D)``, any scale (normalised here).
        labels: ``(N,)`` integer labels.
        k: Neighbours per query (at most ``N - 1`` are used).
        temperature: Softness of the vote.
        num_classes: Number of classes; default ``labels.max() + 1``.
        chunk_size: Queries scored at once (memory ``chunk_size x N``).

    Raises:
        ValueError: Fewer than two samples, or features and labels of different lengths.
    """
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected features (N, D) and labels (N,); got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    count = features.shape[0]
    if count < 2:
        raise ValueError(f"a leave-one-out kNN needs at least two samples; got {count}")
    features = F.normalize(features.float(), dim=1)
    labels = labels.long()
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    neighbours = min(int(k), count - 1)
    correct = 0
    for start in range(0, count, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, count), device=features.device)
        similarity = features[rows] @ features.T  # (c, N)
        similarity[torch.arange(len(rows)), rows] = -math.inf  # leave the query itself out
        weights, index = similarity.topk(neighbours, dim=1)
        votes = torch.zeros(len(rows), classes, device=features.device)
        votes.scatter_add_(1, labels[index], (weights / temperature).exp())
        correct += int((votes.argmax(dim=1) == labels[rows]).sum())
    return correct / count
