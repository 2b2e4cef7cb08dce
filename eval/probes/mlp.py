"""MLP probe: the one-hidden-layer classifier of the DIM paper's evaluation, on frozen features.

Hjelm et al., ICLR 2019 (appendix A.2) report, beside the linear probe, a non-linear classifier
on the frozen features: one hidden layer of 200 units with batch norm, ReLU and dropout 0.1,
trained with Adam. The reference implementation (``cortex_DIM``'s ``ClassificationEval``:
``layers=[dict(layer='linear', args=(200,), bn=True, do=0.1, act='ReLU')]``) builds the
block as Linear -> Dropout -> BatchNorm1d -> ReLU -> Linear; this probe puts dropout after the
ReLU (Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear), where it does not change the
statistics batch norm sees in training against evaluation. The reference trains with Adam at
1e-4 in batches of 64 for a fixed schedule of over 100 epochs; the defaults here (Adam at 2e-3,
batches of 128, at most 100 epochs, early stopping) are chosen to converge within a CPU
budget: tried for accuracy on a few hundred to 10,000 rows, and for cost on 60,000 x 4,000
features. The protocol:

1. a stratified ``val_fraction`` of the training features is held out, with the same split
   as the linear probe's (:func:`eval.probes.linear._stratified_split`, same ``seed``);
2. features are standardised with the mean and standard deviation of the training rows the
   network is fitted on;
3. the network is trained with Adam on shuffled minibatches for at most ``max_epochs``
   epochs; after each epoch it is scored on the held-out rows (batch norm's running
   statistics, no dropout), and training stops when ``patience`` epochs in a row have not
   beaten the best epoch (higher held-out accuracy, ties to the lower held-out
   cross-entropy);
4. the best epoch's weights are scored on the test set. With no row held out (every
   class has a single training sample) all ``max_epochs`` run and the last weights count.

The probe is not refitted on the whole training set: the epoch count chosen on 80% of the
rows would not carry over to 100% exactly, and early stopping needs the held-out rows.

Given ``seed`` the result is deterministic: it fixes the split, the initial weights (drawn
from a private generator, as ``nn.Linear`` draws them), the minibatch order and the dropout
masks; the caller's global random state is neither read nor changed. The same call twice on
the same device and thread count gives the same accuracy.

Cost, measured on this project's 2-core CPU machine (shared with other jobs) with 10 classes of
synthetic 10,000 x 512 features (8,000 rows fitted, 2,000 held out, 10,000 test rows): 3.8 s on
one thread, early stopping after 11 epochs (0.3 s an epoch, so at most about 30 s for all 100);
on two threads the same run took 105 s (two busy threads wait on each other, which is why
:func:`eval.probes.suite.run_probes` runs sets of up to 20,000 images on one thread: wrap direct
calls in :func:`eval.probes.suite.one_thread` likewise). 60,000 x 4,000 features: about 14 s an
epoch on one thread, so 2.5 minutes at the least (11 epochs) and more as the held-out score
keeps improving. On an H200 GPU: 1.3 s and 6.7 s (11 epochs each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.probes.knn import check_probe_inputs
from eval.probes.linear import _is_real, _standardise, _stratified_split
from eval.probes.progress import Progress

__all__ = ["mlp_probe", "mlp_probe_accuracy", "MLPProbeResult"]

#: Hidden units and dropout of the DIM paper's MLP classifier.
DEFAULT_HIDDEN = 200
DEFAULT_DROPOUT = 0.1


@dataclass(frozen=True)
class MLPProbeResult:
    """Outcome of :func:`mlp_probe`.

    Attributes:
        accuracy: Top-1 accuracy on the test set, in [0, 1], of the best epoch's weights.
        epoch: The chosen epoch (1-based): the best on the held-out rows, or the last when
            none were held out.
        epochs: Epochs trained (``max_epochs``, or fewer when early stopping ended training).
        val_accuracy: Held-out accuracy of the chosen epoch; None when no rows were held out.
        val_accuracies: Held-out accuracy after every epoch trained.
        train_accuracy: Accuracy of the chosen weights on the rows they were fitted on.
        stopped_early: Whether ``patience`` ended training before ``max_epochs``.
        device: Where the network was trained.
    """

    accuracy: float
    epoch: int
    epochs: int
    val_accuracy: float | None
    val_accuracies: tuple[float, ...] = field(default_factory=tuple)
    train_accuracy: float = float("nan")
    stopped_early: bool = False
    device: str = "cpu"


def mlp_probe_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, **options: Any) -> float:
    """Top-1 test accuracy in [0, 1] of the DIM paper's MLP probe.

    ``options`` are :func:`mlp_probe`'s keyword arguments (the protocol and its settings
    are documented there); this returns only its ``accuracy``.

    Example:
        >>> acc = mlp_probe_accuracy(train_feats, train_labels, test_feats, test_labels)
    """
    return mlp_probe(train_x, train_y, test_x, test_y, **options).accuracy


def mlp_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    hidden: int = DEFAULT_HIDDEN,
    dropout: float = DEFAULT_DROPOUT,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    max_epochs: int = 100,
    patience: int = 10,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> MLPProbeResult:
    """Trains the MLP probe of the module docstring and reports its test accuracy.

    The defaults need no tuning from a few thousand to 60,000 training rows of up to a few
    thousand features.

    Args:
        train_x: Training features, shape (N, D): numpy array or torch tensor, any device.
        train_y: Integer training labels, shape (N,).
        test_x: Test features, shape (M, D).
        test_y: Integer test labels, shape (M,). A test label never seen in training
            counts as an error.
        hidden: Hidden units (200 in the DIM paper).
        dropout: Dropout probability after the hidden layer's ReLU (0.1 in the DIM paper).
        lr: Adam's learning rate.
        weight_decay: Adam's (L2) weight decay.
        batch_size: Rows per minibatch; a last batch of a single row joins the one before
            (batch norm needs two rows).
        max_epochs: Most epochs to train.
        patience: Epochs without a better held-out score before training stops.
        val_fraction: Share of each training class held out for early stopping.
        seed: Seed of the split, the initial weights, the batch order and dropout.
        device: Where to train; default CUDA when available, else CPU.

    Returns:
        An :class:`MLPProbeResult` with the accuracy, the chosen epoch and details.

    Raises:
        ValueError: On malformed inputs (as :func:`eval.probes.knn.check_probe_inputs`), a
            missing ``test_y``, or an option out of range.
    """
    train_x, train_y, test_x, test_y = check_probe_inputs(train_x, train_y, test_x, test_y)
    if test_y is None:
        raise ValueError("test_y is required; got None")
    _check_int(hidden, "hidden", 1)
    _check_int(batch_size, "batch_size", 2)
    _check_int(max_epochs, "max_epochs", 1)
    _check_int(patience, "patience", 1)
    _check_int(seed, "seed", 0)
    if not _is_real(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
    if not _is_real(lr) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    if not _is_real(weight_decay) or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
    if not _is_real(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1); got {val_fraction!r}")
    device = (
        torch.device(device)
        if device is not None
        else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    )

    train_x, test_x = train_x.to(device), test_x.to(device)
    train_y, test_y = train_y.to(device), test_y.to(device)
    # Classes are the labels seen in training, mapped to 0..C-1 (as in the linear probe).
    classes = torch.unique(train_y)
    train_t = torch.searchsorted(classes, train_y)
    fit_idx, val_idx = _stratified_split(train_t.cpu().numpy(), float(val_fraction), int(seed))
    fit_idx_t = torch.from_numpy(fit_idx).to(device)
    val_idx_t = torch.from_numpy(val_idx).to(device)
    x_fit, x_val, x_test = _standardise(train_x[fit_idx_t], train_x[val_idx_t], test_x)
    y_fit, y_val = train_t[fit_idx_t], train_t[val_idx_t]
    del train_x, test_x

    # Initial weights and batch order from a CPU generator (the same on every device);
    # dropout masks from one on the training device.
    generator = torch.Generator().manual_seed(int(seed))
    dropout_generator = generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(int(seed))
    net = _MLP(x_fit.shape[1], int(hidden), len(classes), float(dropout), generator, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    bounds = _batch_bounds(len(y_fit), int(batch_size))

    val_accuracies: list[float] = []
    best_key: tuple[float, float] | None = None
    best_state = net.state()
    best_epoch, since_best, stopped_early = 0, 0, False
    progress = Progress(int(max_epochs), f"MLP probe ({len(y_fit)} images)", unit="epoch")
    for epoch in range(1, int(max_epochs) + 1):
        progress.update()
        order = torch.randperm(len(y_fit), generator=generator).to(device)
        with torch.enable_grad():
            for start, stop in bounds:
                idx = order[start:stop]
                if len(idx) == 1:  # a single fitted row: batch norm needs two
                    idx = idx.repeat(2)
                loss = F.cross_entropy(net(x_fit[idx], train=True, generator=dropout_generator), y_fit[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if len(y_val) == 0:
            best_state, best_epoch = net.state(), epoch
            continue
        with torch.no_grad():
            logits = net(x_val)
            acc = int((logits.argmax(1) == y_val).sum()) / len(y_val)
            key = (-acc, float(F.cross_entropy(logits, y_val)))
        val_accuracies.append(acc)
        if best_key is None or key < best_key:
            best_key, best_state, best_epoch, since_best = key, net.state(), epoch, 0
        else:
            since_best += 1
            if since_best >= patience:
                stopped_early = epoch < max_epochs
                break

    progress.close()
    net.load(best_state)
    with torch.no_grad():
        train_acc = int((_predict(net, x_fit) == y_fit).sum()) / len(y_fit)
        test_acc = int((classes[_predict(net, x_test)] == test_y).sum()) / len(test_y)
    return MLPProbeResult(
        accuracy=test_acc,
        epoch=best_epoch,
        epochs=epoch,
        val_accuracy=None if best_key is None else -best_key[0],
        val_accuracies=tuple(val_accuracies),
        train_accuracy=train_acc,
        stopped_early=stopped_early,
        device=str(device),
    )


class _MLP(torch.nn.Module):
    """Linear (no bias: batch norm's shift is one) -> BatchNorm1d -> ReLU -> dropout -> Linear.

    Dropout draws its masks from the generator given to :meth:`forward`, not the global one.
    """

    def __init__(
        self, inputs: int, hidden: int, classes: int, dropout: float, generator: torch.Generator, device: torch.device
    ) -> None:
        super().__init__()
        self.dropout = dropout
        # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``generator``.
        self.hidden = torch.nn.Parameter(_uniform((hidden, inputs), inputs, generator).to(device))
        self.norm = torch.nn.BatchNorm1d(hidden, device=device)
        self.out_weight = torch.nn.Parameter(_uniform((classes, hidden), hidden, generator).to(device))
        self.out_bias = torch.nn.Parameter(_uniform((classes,), hidden, generator).to(device))

    def forward(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        self.norm.train(train)
        h = F.relu(self.norm(F.linear(x, self.hidden)))
        if train and self.dropout > 0:
            keep = torch.rand(h.shape, generator=generator, device=h.device) >= self.dropout
            h = h * keep / (1.0 - self.dropout)
        return F.linear(h, self.out_weight, self.out_bias)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)


def _predict(net: _MLP, x: torch.Tensor, rows: int = 65_536) -> torch.Tensor:
    """Class indices (0..C-1) of ``x``, in blocks of ``rows``."""
    return torch.cat([net(x[i : i + rows]).argmax(1) for i in range(0, len(x), rows)])


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def _batch_bounds(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each minibatch; a last batch of one row joins the previous one."""
    bounds = [(start, min(start + batch_size, rows)) for start in range(0, rows, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], rows)]
    return bounds


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
