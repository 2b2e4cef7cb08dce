"""The FAISS kNN probe against a brute-force reference, lightly's knn_predict and sanity
levels (separable clusters, random labels), and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval import knn_accuracy
from eval.probes.knn import knn_predict_scores, knn_topk_accuracy
from eval.probes.suite import one_thread


@pytest.fixture(autouse=True)
def single_thread():
    """Each test with one torch thread and one BLAS/OpenMP thread (see eval.probes.suite.one_thread)."""
    with one_thread():
        yield


def clustered(n_train, n_test, num_classes=10, dim=32, noise=1.5, seed=0):
    """Gaussian clusters around random centres: overlapping enough that kNN makes errors,
    continuous enough that ties in similarity or class score are (almost surely) absent."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))

    def draw(n):
        y = rng.integers(0, num_classes, n)
        return (centres[y] + noise * rng.normal(size=(n, dim))).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


def brute_force_knn_scores(train_x, train_y, test_x, k, temperature, num_classes):
    """Wu et al. (2018) written out in float64 NumPy, the slow and obvious way."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = test.astype(np.float64) @ train.astype(np.float64).T
    scores = np.zeros((len(test_x), num_classes))
    for i in range(len(test_x)):
        nearest = np.argsort(-sims[i])[:k]
        for j in nearest:
            scores[i, train_y[j]] += np.exp(sims[i, j] / temperature)
    return scores


def test_predictions_equal_brute_force_reference():
    train_x, train_y, test_x, test_y = clustered(600, 200, num_classes=7, dim=16)
    k, temperature = 25, 0.1
    ours = knn_predict_scores(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=7)
    ref = brute_force_knn_scores(train_x, train_y, test_x, k, temperature, 7)

    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))
    # Scores are the reference's, up to the per-row normalisation to vote shares.
    np.testing.assert_allclose(ours, ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-9)
    expected_acc = float((ref.argmax(1) == test_y).mean())
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature) == pytest.approx(
        expected_acc, abs=1e-12
    )


def test_batched_search_matches_single_batch():
    train_x, train_y, test_x, test_y = clustered(500, 301)
    whole = knn_predict_scores(train_x, train_y, test_x, k=50, batch_size=10_000)
    batched = knn_predict_scores(train_x, train_y, test_x, k=50, batch_size=37)
    np.testing.assert_allclose(batched, whole, rtol=1e-12)


def test_same_predictions_as_lightly_knn_predict():
    from lightly.utils.benchmarking import knn_predict

    train_x, train_y, test_x, test_y = clustered(2000, 500, num_classes=10, dim=32)
    bank = F.normalize(torch.from_numpy(train_x), dim=1)
    query = F.normalize(torch.from_numpy(test_x), dim=1)
    lightly_pred = knn_predict(
        query,
        bank.T.contiguous(),
        torch.from_numpy(train_y),
        num_classes=10,
        knn_k=200,
        knn_t=0.1,
    )  # (M, C): classes by descending score
    ours = knn_predict_scores(train_x, train_y, test_x, k=200, temperature=0.1)

    np.testing.assert_array_equal(ours.argmax(1), lightly_pred[:, 0].numpy())
    accs = knn_topk_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    labels = torch.from_numpy(test_y)[:, None]
    assert accs["top1"] == pytest.approx((lightly_pred[:, :1] == labels).any(1).float().mean().item(), abs=1e-6)
    assert accs["top5"] == pytest.approx((lightly_pred[:, :5] == labels).any(1).float().mean().item(), abs=1e-6)
    assert 0.5 < accs["top1"] < 0.999  # the comparison is not a trivial one


def test_well_separated_clusters_are_classified_almost_perfectly():
    train_x, train_y, test_x, test_y = clustered(1000, 500, num_classes=10, noise=0.05)
    assert knn_accuracy(train_x, train_y, test_x, test_y) >= 0.99


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(2000, 32)).astype(np.float32)
    test_x = rng.normal(size=(2000, 32)).astype(np.float32)
    train_y, test_y = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    accs = knn_topk_accuracy(train_x, train_y, test_x, test_y)
    # Chance is 0.1 and 0.5; the binomial standard deviations at n=2000 are ~0.007, ~0.011.
    assert abs(accs["top1"] - 0.1) < 0.035
    assert abs(accs["top5"] - 0.5) < 0.05


def test_accepts_torch_tensors_and_float64_arrays_alike():
    train_x, train_y, test_x, test_y = clustered(300, 100)
    from_numpy = knn_accuracy(train_x, train_y, test_x, test_y, k=20)
    from_torch = knn_accuracy(
        torch.from_numpy(train_x).requires_grad_(),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y).int(),
        k=20,
    )
    from_float64 = knn_accuracy(train_x.astype(np.float64), train_y, test_x.astype(np.float64), test_y, k=20)
    assert isinstance(from_numpy, float)
    assert from_numpy == from_torch == from_float64


def test_k_larger_than_training_set_uses_every_training_sample():
    train_x, train_y, test_x, _ = clustered(30, 20, num_classes=3)
    clipped = knn_predict_scores(train_x, train_y, test_x, k=1000)
    ref = brute_force_knn_scores(train_x, train_y, test_x, 30, 0.1, 3)
    np.testing.assert_array_equal(clipped.argmax(1), ref.argmax(1))


def test_small_temperature_does_not_overflow():
    train_x, train_y, test_x, test_y = clustered(300, 100)
    scores = knn_predict_scores(train_x, train_y, test_x, k=50, temperature=1e-3)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(1), 1.0)
    # As T -> 0 the vote goes to the single nearest neighbour.
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=50, temperature=1e-3) == knn_accuracy(
        train_x, train_y, test_x, test_y, k=1
    )


def test_top5_only_reported_with_more_than_five_classes():
    train_x, train_y, test_x, test_y = clustered(200, 50, num_classes=5)
    assert set(knn_topk_accuracy(train_x, train_y, test_x, test_y)) == {"top1"}
    train_x, train_y, test_x, test_y = clustered(200, 50, num_classes=6)
    assert set(knn_topk_accuracy(train_x, train_y, test_x, test_y)) == {"top1", "top5"}


def _ok():
    return clustered(40, 10, num_classes=3, dim=4)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda a: a.update(train_y=a["train_y"][:-1]),
            r"train_x and train_y must have the same length; got 40 feature rows and 39",
        ),
        (
            lambda a: a.update(test_y=a["test_y"][:5]),
            r"test_x and test_y must have the same length; got 10 feature rows and 5",
        ),
        (
            lambda a: a.update(train_x=a["train_x"][:, :, None]),
            r"train_x must be a 2-D array .* got shape \(40, 4, 1\)",
        ),
        (lambda a: a.update(test_x=a["test_x"][0]), r"test_x must be a 2-D array .* got shape \(4,\)"),
        (
            lambda a: a.update(test_x=a["test_x"][:, :3]),
            r"same dimension; got train_x with 4 and test_x with 3 columns",
        ),
        (
            lambda a: a["train_x"].__setitem__((3, 1), np.nan),
            r"train_x must hold finite values; got NaN or inf in 1 of 40 rows",
        ),
        (
            lambda a: a["test_x"].__setitem__((0, 0), np.inf),
            r"test_x must hold finite values; got NaN or inf in 1 of 10 rows",
        ),
        (
            lambda a: a.update(train_y=a["train_y"].astype(np.float32)),
            r"train_y must hold integer class labels; got dtype torch.float32",
        ),
        (lambda a: a.update(test_y=-a["test_y"] - 1), r"test_y must hold labels >= 0"),
        (lambda a: a.update(k=0), r"k \(number of neighbours\) must be an integer >= 1; got 0"),
        (lambda a: a.update(temperature=0.0), r"temperature must be .* > 0; got 0.0"),
        (lambda a: a.update(temperature=-0.1), r"temperature must be .* > 0; got -0.1"),
        (lambda a: a.update(num_classes=2), r"labels must lie in \[0, num_classes=2\)"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(change, match):
    train_x, train_y, test_x, test_y = _ok()
    args = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    change(args)
    with pytest.raises(ValueError, match=match):
        knn_accuracy(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_same_accuracy_as_numpy():
    train_x, train_y, test_x, test_y = clustered(500, 200)
    on_cuda = knn_accuracy(*(torch.from_numpy(a).cuda() for a in (train_x, train_y, test_x, test_y)), k=50)
    assert on_cuda == knn_accuracy(train_x, train_y, test_x, test_y, k=50)
