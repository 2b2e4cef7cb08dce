"""Linear probe: multinomial logistic regression on frozen features.

The linear evaluation protocol of self-supervised learning (used for DIM by Hjelm et al.,
ICLR 2019): a linear classifier is trained on frozen features of the training set, and its
top-1 accuracy on the test set measures how linearly separable the representation is. This
is the L-BFGS variant of Kornblith, Shlens & Le, "Do Better ImageNet Models Transfer
Better?" (CVPR 2019), also used for SimCLR's linear transfer evaluation (Chen et al. 2020).

The classifier is fitted to convergence rather than for a fixed number of SGD epochs, so the
number says something about the features and not about an optimisation schedule:

1. features are standardised with the training set's mean and standard deviation;
2. the objective is the mean cross-entropy plus ``l2 / 2 * ||W||^2`` (the bias is not
   penalised, as in scikit-learn), minimised with full-batch L-BFGS and a strong-Wolfe line
   search (``torch.optim.LBFGS``), on CUDA when available;
3. ``l2`` is chosen from a small grid by accuracy on a stratified held-out part of the
   training set (ties go to the lower held-out cross-entropy), and the classifier is then
   refitted on the whole training set with that value.

The problem is strictly convex for ``l2 > 0``, so the optimum does not depend on the
starting point: fits along the grid are warm-started from the previous solution only to
save iterations. Given ``seed`` (which fixes the held-out split), the result is
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eval.probes.knn import check_probe_inputs
from eval.probes.progress import Progress

__all__ = ["linear_probe", "linear_probe_accuracy", "check_l2_grid", "LinearProbeResult", "DEFAULT_L2_GRID"]

# Weight decays tried on the held-out split, from strong to weak regularisation. They span
# scikit-learn's default (C = 1, i.e. l2 = 1 / N) for training sets of 10 to 10^6 samples.
DEFAULT_L2_GRID: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        accuracy: Top-1 accuracy on the test set, in [0, 1].
        l2: The weight decay of the final classifier (chosen on the held-out split).
        val_accuracy: Held-out accuracy of the chosen ``l2``; None when no selection ran
            (a one-value grid, or a training set too small to hold samples out).
        val_accuracies: Held-out accuracy of every ``l2`` tried.
        train_accuracy: Accuracy of the final classifier on the whole training set.
        iterations: L-BFGS iterations of the final fit.
        converged: Whether the final fit stopped on a tolerance rather than ``max_iter``.
        device: Where the classifier was fitted.
    """

    accuracy: float
    l2: float
    val_accuracy: float | None
    val_accuracies: dict[float, float] = field(default_factory=dict)
    train_accuracy: float = float("nan")
    iterations: int = 0
    converged: bool = True
    device: str = "cpu"


def linear_probe_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, **options: Any) -> float:
    """Top-1 test accuracy in [0, 1] of a linear probe fitted with L-BFGS.

    ``options`` are :func:`linear_probe`'s keyword arguments (the protocol and its settings
    are documented there); this returns only its ``accuracy``.

    Example:
        >>> acc = linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels)
    """
    return linear_probe(train_x, train_y, test_x, test_y, **options).accuracy


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """Fits the linear probe of the module docstring and reports its test accuracy.

    Args:
        train_x: Training features, shape (N, D): numpy array or torch tensor, any device.
        train_y: Integer training labels, shape (N,).
        test_x: Test features, shape (M, D).
        test_y: Integer test labels, shape (M,). A test label never seen in training
            counts as an error.
        l2_grid: Weight decays to choose from; with a single value no samples are held
            out and that value is used directly.
        val_fraction: Share of each training class held out to choose ``l2``.
        seed: Seed of the held-out split; the only source of randomness.
        max_iter: Cap on L-BFGS iterations per fit.
        device: Where to fit; default CUDA when available, else CPU.

    Returns:
        A :class:`LinearProbeResult` with the accuracy, the chosen ``l2`` and details.

    Raises:
        ValueError: On malformed inputs (as :func:`eval.probes.knn.check_probe_inputs`), an empty
            or non-positive ``l2_grid``, ``val_fraction`` outside (0, 1) or
            ``max_iter < 1``.
    """
    train_x, train_y, test_x, test_y = check_probe_inputs(train_x, train_y, test_x, test_y)
    grid = check_l2_grid(l2_grid)
    if not _is_real(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1); got {val_fraction!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    device = (
        torch.device(device)
        if device is not None
        else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    )

    train_x, test_x = train_x.to(device), test_x.to(device)
    train_y, test_y = train_y.to(device), test_y.to(device)
    # Classes are the labels seen in training, mapped to 0..C-1 so no unused class gets an
    # unpenalised bias that drifts towards -inf.
    classes = torch.unique(train_y)
    train_t = torch.searchsorted(classes, train_y)

    val_accuracies: dict[float, float] = {}
    val_accuracy: float | None = None
    chosen = grid[0] if len(grid) == 1 else grid[len(grid) // 2]
    warm: tuple[torch.Tensor, torch.Tensor] | None = None
    fit_idx, val_idx = _stratified_split(train_t.cpu().numpy(), val_fraction, seed)
    if len(grid) > 1 and len(val_idx) > 0:
        fit_idx_t = torch.from_numpy(fit_idx).to(device)
        val_idx_t = torch.from_numpy(val_idx).to(device)
        x_fit, x_val = _standardise(train_x[fit_idx_t], train_x[val_idx_t])
        y_fit, y_val = train_t[fit_idx_t], train_t[val_idx_t]
        best_key = None
        progress = Progress(len(grid) + 1, f"linear probe ({len(train_t)} images), l2 grid and refit", unit="fit")
        for l2 in grid:  # strong to weak: each fit warm-starts the next
            params, _, _ = _fit(x_fit, y_fit, len(classes), l2, max_iter, warm)
            progress.update()
            warm = params
            with torch.no_grad():
                logits = F.linear(x_val, *params)
                acc = int((logits.argmax(1) == y_val).sum()) / len(y_val)
                val_loss = float(F.cross_entropy(logits, y_val))
            val_accuracies[l2] = acc
            key = (-acc, val_loss)
            if best_key is None or key < best_key:
                best_key, chosen, val_accuracy, best_params = key, l2, acc, params
        # The chosen fit is close to the refit's optimum (same l2, 80% of the data).
        warm = best_params

        progress.close()

    x_train, x_test = _standardise(train_x, test_x)
    (weight, bias), iterations, converged = _fit(x_train, train_t, len(classes), chosen, max_iter, warm)
    with torch.no_grad():
        train_acc = int((F.linear(x_train, weight, bias).argmax(1) == train_t).sum()) / len(train_t)
        pred = classes[F.linear(x_test, weight, bias).argmax(1)]
        test_acc = int((pred == test_y).sum()) / len(test_y)
    return LinearProbeResult(
        accuracy=test_acc,
        l2=chosen,
        val_accuracy=val_accuracy,
        val_accuracies=val_accuracies,
        train_accuracy=train_acc,
        iterations=iterations,
        converged=converged,
        device=str(device),
    )


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], int, bool]:
    """Minimises mean cross-entropy + l2/2 ||W||^2 with full-batch L-BFGS.

    Returns ``((weight, bias), iterations, converged)``; weight is (C, D), bias (C,).
    """
    if init is None:
        # (C, D), the nn.Linear layout: autograd then forms the weight gradient as
        # grad_logits.T @ x, which MKL ran 5x faster on CPU than x.T @ grad_logits.
        weight = torch.zeros(num_classes, x.shape[1], device=x.device, dtype=x.dtype)
        bias = torch.zeros(num_classes, device=x.device, dtype=x.dtype)
    else:
        weight, bias = (p.detach().clone() for p in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,  # the strong-Wolfe line search picks the step; 1 is its first trial
        max_iter=max_iter,
        max_eval=2 * max_iter,
        history_size=20,
        # Gradient of the mean loss: 1e-5 is about where float32 sums over many samples
        # stop being exact; the change tolerance stops a fit that has stalled at that floor.
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return (weight.detach(), bias.detach()), iterations, iterations < max_iter


def _standardise(fit: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centres and scales by ``fit``'s per-feature mean and std (population, as sklearn)."""
    mean = fit.mean(dim=0)
    std = fit.std(dim=0, unbiased=False)
    # A constant feature (std 0) carries no information: leave it at 0 instead of 0/0.
    std = torch.where(std > 1e-8 * (1.0 + mean.abs()), std, torch.ones_like(std))
    return tuple((t - mean) / std for t in (fit, *others))


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``val_fraction`` of each class held out, at least one sample of
    every class with two or more, and never a class's last sample."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def check_l2_grid(l2_grid: Sequence[float]) -> list[float]:
    """``l2_grid`` as floats, strong to weak, without repeats.

    Raises:
        ValueError: Not a sequence of numbers, empty, or a value that is not finite and > 0.
    """
    try:
        grid = [float(v) for v in l2_grid]
    except (TypeError, ValueError) as err:
        raise ValueError(f"l2_grid must be a sequence of numbers; got {l2_grid!r}") from err
    if not grid or not all(np.isfinite(v) and v > 0 for v in grid):
        raise ValueError(f"l2_grid must hold one or more finite weight decays > 0; got {l2_grid!r}")
    # Strong to weak, so warm starts move from the easiest problem to the hardest.
    return sorted(set(grid), reverse=True)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
