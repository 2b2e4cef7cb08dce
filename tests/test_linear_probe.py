"""The L-BFGS linear probe against scikit-learn's logistic regression, its determinism,
and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from eval import linear_probe_accuracy
from eval.probes.linear import linear_probe
from eval.probes.suite import one_thread

# The probe must match scikit-learn to within this (about one test sample in 200).
TOLERANCE = 0.005


@pytest.fixture(autouse=True)
def single_thread():
    """Each test with one torch thread and one BLAS/OpenMP thread (see eval.probes.suite.one_thread)."""
    with one_thread():
        yield


def sklearn_accuracy(train_x, train_y, test_x, test_y):
    """scikit-learn's default logistic regression (C=1, lbfgs) on standardised features,
    run to convergence: the bar the probe has to reach."""
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=10_000).fit(scaler.transform(train_x), train_y)
    return clf.score(scaler.transform(test_x), test_y)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def synthetic():
    x, y = make_classification(
        n_samples=3000,
        n_features=64,
        n_informative=24,
        n_redundant=16,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.0,
        random_state=0,
    )
    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


def test_digits_accuracy_at_least_sklearn(digits):
    train_x, test_x, train_y, test_y = digits
    ours = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    reference = sklearn_accuracy(train_x, train_y, test_x, test_y)
    assert isinstance(ours, float)
    assert ours >= reference - TOLERANCE, (ours, reference)
    assert ours > 0.93


def test_synthetic_accuracy_at_least_sklearn(synthetic):
    train_x, test_x, train_y, test_y = synthetic
    ours = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    reference = sklearn_accuracy(train_x, train_y, test_x, test_y)
    assert ours >= reference - TOLERANCE, (ours, reference)
    assert 0.3 < ours < 0.99  # not a trivial problem: chance is 1/6


def test_single_l2_fit_reaches_sklearns_optimum(digits):
    # sklearn minimises 1/2 ||W||^2 + C * sum(loss), i.e. mean loss + (1 / (2 C N)) ||W||^2:
    # the same objective as ours with l2 = 1 / (C N). Same convex problem, same predictions.
    train_x, test_x, train_y, test_y = digits
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-6).fit(scaler.transform(train_x), train_y)
    result = linear_probe(train_x, train_y, test_x, test_y, l2_grid=[1.0 / len(train_y)])
    assert result.converged and result.val_accuracy is None
    assert result.accuracy == pytest.approx(clf.score(scaler.transform(test_x), test_y), abs=1.5 / len(test_y))


def test_deterministic_given_seed_and_reports_the_chosen_l2(synthetic):
    train_x, test_x, train_y, test_y = synthetic
    first = linear_probe(train_x, train_y, test_x, test_y, seed=3)
    again = linear_probe(train_x, train_y, test_x, test_y, seed=3)
    assert first == again
    assert first.l2 in first.val_accuracies
    assert first.val_accuracy == max(first.val_accuracies.values())
    assert len(first.val_accuracies) == 6


def test_well_separated_classes_are_learned_and_random_labels_are_not():
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.normal(size=(4, 20))
    y = rng.integers(0, 4, 1200)
    x = centres[y] + rng.normal(size=(1200, 20))
    assert linear_probe_accuracy(x[:900], y[:900], x[900:], y[900:]) >= 0.99
    shuffled = rng.permutation(y)
    assert abs(linear_probe_accuracy(x[:900], shuffled[:900], x[900:], shuffled[900:]) - 0.25) < 0.1


def test_torch_inputs_and_labels_not_starting_at_zero(digits):
    train_x, test_x, train_y, test_y = digits
    plain = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    # Labels 10..19: the probe maps the classes it sees, predictions map back.
    shifted = linear_probe_accuracy(
        torch.from_numpy(train_x).float(),
        torch.from_numpy(train_y + 10),
        torch.from_numpy(test_x).float(),
        torch.from_numpy(test_y + 10),
    )
    assert shifted == pytest.approx(plain, abs=1.5 / len(test_y))


def test_test_class_unseen_in_training_counts_as_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)) + np.repeat(np.eye(5)[:2] * 10, 50, axis=0)
    y = np.repeat([0, 1], 50)
    test_y = np.array([0, 1, 7])
    test_x = np.stack([x[0], x[50], x[0]])
    assert linear_probe_accuracy(x, y, test_x, test_y) == pytest.approx(2 / 3)


def _ok():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(40, 4)), rng.integers(0, 3, 40), rng.normal(size=(10, 4)), rng.integers(0, 3, 10))


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda a: a.update(train_y=a["train_y"][:-1]),
            r"train_x and train_y must have the same length; got 40 feature rows and 39",
        ),
        (
            lambda a: a.update(train_x=a["train_x"][:, :, None]),
            r"train_x must be a 2-D array .* got shape \(40, 4, 1\)",
        ),
        (
            lambda a: a.update(test_x=a["test_x"][:, :2]),
            r"same dimension; got train_x with 4 and test_x with 2 columns",
        ),
        (
            lambda a: a["train_x"].__setitem__((0, 0), np.nan),
            r"train_x must hold finite values; got NaN or inf in 1 of 40 rows",
        ),
        (
            lambda a: a["test_x"].__setitem__((1, 2), -np.inf),
            r"test_x must hold finite values; got NaN or inf in 1 of 10 rows",
        ),
        (
            lambda a: a.update(test_y=a["test_y"] + 0.5),
            r"test_y must hold integer class labels; got dtype torch.float64",
        ),
        (lambda a: a.update(l2_grid=[]), r"l2_grid must hold one or more .* got \[\]"),
        (lambda a: a.update(l2_grid=[1e-3, -1.0]), r"weight decays > 0; got \[0.001, -1.0\]"),
        (lambda a: a.update(val_fraction=1.0), r"val_fraction must be a number in \(0, 1\)"),
        (lambda a: a.update(max_iter=0), r"max_iter must be an integer >= 1; got 0"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(change, match):
    train_x, train_y, test_x, test_y = _ok()
    args = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    change(args)
    with pytest.raises(ValueError, match=match):
        linear_probe_accuracy(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_agrees_with_cpu_fit(digits):
    train_x, test_x, train_y, test_y = digits
    on_cpu = linear_probe(train_x, train_y, test_x, test_y, device="cpu")
    on_cuda = linear_probe(
        torch.from_numpy(train_x).cuda(),
        torch.from_numpy(train_y).cuda(),
        torch.from_numpy(test_x).cuda(),
        torch.from_numpy(test_y).cuda(),
    )
    assert on_cuda.device.startswith("cuda")
    assert on_cuda.accuracy == pytest.approx(on_cpu.accuracy, abs=2.5 / len(test_y))
