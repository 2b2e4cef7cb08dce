"""The DIM paper's MLP probe: it separates what a linear probe cannot, matches it where a linear
probe can, is deterministic for a seed, refuses bad inputs, and runs in compare/transfer/evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval import linear_probe_accuracy, mlp_probe_accuracy
from eval.cli import build_parser
from eval.errors import DatasetNotFoundError
from eval.experiments.compare import TABLE_COLUMNS, pixel_rows, probe_settings, resolve_comparison
from eval.experiments.evaluate import COLUMNS as EVALUATE_COLUMNS
from eval.experiments.report import write_report
from eval.experiments.transfer import TRANSFER_COLUMNS, resolve_transfer
from eval.probes.mlp import MLPProbeResult, mlp_probe
from eval.probes.suite import PROBES, ProbeSettings, one_thread, probe_data, run_probes


@pytest.fixture(autouse=True)
def single_thread():
    """Each test with one torch thread and one BLAS/OpenMP thread (as run_probes on small sets)."""
    with one_thread():
        yield


def rings(classes: int, per_class: int, noise_dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Concentric rings of radius 1, 2, ... (width 0.1) in 2-D, plus standard-normal noise columns."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    radius = 1.0 + y + rng.normal(0.0, 0.1, len(y))
    angle = rng.uniform(0.0, 2 * np.pi, len(y))
    circle = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return np.concatenate([circle, rng.normal(size=(len(y), noise_dims))], axis=1).astype(np.float32), y


def blobs(seed: int, classes: int = 5, dims: int = 20, per_class: int = 300, spread: float = 1.0):
    """Gaussian blobs (unit variance, centres N(0, spread^2)): train and test splits, (x, y, x, y)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * spread
    y = np.repeat(np.arange(classes), per_class)
    train_x = (centres[y] + rng.normal(size=(len(y), dims))).astype(np.float32)
    test_x = (centres[y] + rng.normal(size=(len(y), dims))).astype(np.float32)
    return train_x, y, test_x, y


# ---- accuracy --------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_rings_are_separated_by_the_mlp_and_not_by_the_linear_probe(classes):
    train_x, train_y = rings(classes, 300, noise_dims=5, seed=0)
    test_x, test_y = rings(classes, 300, noise_dims=5, seed=1)
    mlp = mlp_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    linear = linear_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    assert isinstance(mlp, float)
    assert mlp > 0.9, (mlp, linear)
    assert linear < 0.7, (mlp, linear)  # the problem really needs the hidden layer


@pytest.mark.parametrize("seed", [1, 2])
def test_on_gaussian_blobs_the_mlp_is_as_good_as_the_linear_probe(seed):
    train_x, train_y, test_x, test_y = blobs(seed)
    mlp = mlp_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    linear = linear_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    assert 0.9 < linear < 1.0, linear  # linearly separable-ish, not trivially
    assert mlp >= linear - 0.01, (mlp, linear)


def test_the_result_reports_the_chosen_epoch_and_early_stopping():
    train_x, train_y, test_x, test_y = blobs(1)
    result = mlp_probe(train_x, train_y, test_x, test_y, device="cpu", max_epochs=200, patience=3)
    assert isinstance(result, MLPProbeResult)
    assert result.device == "cpu"
    assert result.stopped_early and result.epochs < 200
    assert result.epochs == len(result.val_accuracies) == result.epoch + 3  # patience epochs after the best
    assert result.val_accuracy == result.val_accuracies[result.epoch - 1] == max(result.val_accuracies)
    assert 0.9 < result.train_accuracy <= 1.0

    capped = mlp_probe(train_x, train_y, test_x, test_y, device="cpu", max_epochs=2, patience=5)
    assert capped.epochs == 2 and not capped.stopped_early and capped.epoch in (1, 2)


def test_without_held_out_rows_every_epoch_runs_and_the_last_counts():
    # One training sample per class: nothing can be held out (as in the linear probe's split).
    x = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], dtype=np.float32)
    y = np.array([0, 1, 2])
    result = mlp_probe(x, y, x + 0.1, y, device="cpu", max_epochs=30)
    assert result.val_accuracy is None and result.val_accuracies == ()
    assert result.epoch == result.epochs == 30 and not result.stopped_early
    assert result.accuracy == 1.0
    # A single training row (batch norm needs two: the row is repeated).
    single = mlp_probe(x[:1], y[:1], x, y, device="cpu", max_epochs=3)
    assert single.accuracy == pytest.approx(1 / 3)


def test_torch_inputs_labels_not_starting_at_zero_and_unseen_test_labels():
    train_x, train_y, test_x, test_y = blobs(1)
    as_numpy = mlp_probe_accuracy(train_x, train_y + 7, test_x, test_y + 7, device="cpu")
    as_torch = mlp_probe_accuracy(
        *(torch.from_numpy(a) for a in (train_x, train_y + 7, test_x, test_y + 7)), device="cpu"
    )
    assert as_torch == as_numpy == mlp_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    assert as_numpy > 0.9
    # A test label never seen in training counts as an error.
    unseen = np.full_like(test_y, 9)
    assert mlp_probe_accuracy(train_x, train_y, test_x, unseen, device="cpu") == 0.0


# ---- determinism -----------------------------------------------------------------------------


def test_deterministic_for_a_seed_whatever_the_global_random_state():
    train_x, train_y = rings(3, 200, noise_dims=5, seed=0)
    test_x, test_y = rings(3, 200, noise_dims=5, seed=1)
    torch.manual_seed(1)
    first = mlp_probe(train_x, train_y, test_x, test_y, device="cpu", max_epochs=20)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = mlp_probe(train_x, train_y, test_x, test_y, device="cpu", max_epochs=20)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global generator untouched
    assert first == second
    other = mlp_probe(train_x, train_y, test_x, test_y, device="cpu", max_epochs=20, seed=1)
    assert other.val_accuracies != first.val_accuracies  # the seed does change the run


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_deterministic_and_agrees_with_cpu():
    train_x, train_y = rings(3, 300, noise_dims=5, seed=0)
    test_x, test_y = rings(3, 300, noise_dims=5, seed=1)
    on_cuda = [mlp_probe(torch.from_numpy(train_x).cuda(), train_y, test_x, test_y) for _ in range(2)]
    assert on_cuda[0].device.startswith("cuda")
    assert on_cuda[0] == on_cuda[1]
    on_cpu = mlp_probe(train_x, train_y, test_x, test_y, device="cpu")
    assert on_cuda[0].accuracy > 0.9 and abs(on_cuda[0].accuracy - on_cpu.accuracy) < 0.05


# ---- input errors ----------------------------------------------------------------------------


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
        (lambda a: a.update(test_y=a["test_y"] + 0.5), r"test_y must hold integer class labels"),
        (lambda a: a.update(train_y=a["train_y"] - 5), r"train_y must hold labels >= 0"),
        (lambda a: a.update(test_x=a["test_x"][:0], test_y=a["test_y"][:0]), r"the test set is empty"),
        (lambda a: a.update(test_y=None), r"test_y is required"),
        (lambda a: a.update(hidden=0), r"hidden must be an integer >= 1; got 0"),
        (lambda a: a.update(hidden=2.5), r"hidden must be an integer >= 1; got 2.5"),
        (lambda a: a.update(batch_size=1), r"batch_size must be an integer >= 2; got 1"),
        (lambda a: a.update(max_epochs=0), r"max_epochs must be an integer >= 1; got 0"),
        (lambda a: a.update(patience=0), r"patience must be an integer >= 1; got 0"),
        (lambda a: a.update(seed=-1), r"seed must be an integer >= 0; got -1"),
        (lambda a: a.update(dropout=1.0), r"dropout must be a number in \[0, 1\); got 1.0"),
        (lambda a: a.update(lr=0.0), r"lr must be a finite number > 0; got 0.0"),
        (lambda a: a.update(lr=float("nan")), r"lr must be a finite number > 0"),
        (lambda a: a.update(weight_decay=-1e-4), r"weight_decay must be a finite number >= 0"),
        (lambda a: a.update(val_fraction=1.0), r"val_fraction must be a number in \(0, 1\)"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(change, match):
    train_x, train_y, test_x, test_y = _ok()
    args = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    change(args)
    with pytest.raises(ValueError, match=match):
        mlp_probe_accuracy(**args)


# ---- wired into the suite, the experiments and the command line ------------------------------


def test_the_suite_runs_the_mlp_probe_and_names_it():
    assert PROBES["mlp"] == "mlp_acc"
    settings = ProbeSettings(("knn", "linear", "mlp"), knn_k=10)
    assert settings.columns == ["knn_acc", "linear_acc", "mlp_acc"]
    assert settings.table_columns(TABLE_COLUMNS)[:5] == ["method", "position", "knn_acc", "linear_acc", "mlp_acc"]
    assert "mlp_acc" not in ProbeSettings(("knn", "linear")).table_columns(TABLE_COLUMNS)
    for columns in (TABLE_COLUMNS, TRANSFER_COLUMNS, EVALUATE_COLUMNS):
        assert "mlp_acc" in settings.table_columns(columns)
    with pytest.raises(ValueError, match="probes must be one or more of knn, linear, mlp"):
        ProbeSettings(("knn", "svm"))

    train_x, train_y = rings(3, 100, noise_dims=2, seed=0)
    test_x, test_y = rings(3, 100, noise_dims=2, seed=1)
    result = run_probes((train_x, train_y), (test_x, test_y), ProbeSettings(("mlp",)))
    assert set(result) == {"mlp_acc", "mlp_epoch"}
    assert result["mlp_acc"] == mlp_probe_accuracy(train_x, train_y, test_x, test_y, device="cpu")
    assert isinstance(result["mlp_epoch"], int) and result["mlp_epoch"] >= 1


def test_compare_and_transfer_configs_accept_the_mlp_probe(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: c\nencoder: {name: test_resnet}\n"
        "compare: {probes: [knn, linear, mlp]}\n"
        "transfer: {probes: [knn, linear, mlp], targets: [digits]}\n"
    )
    comparison = resolve_comparison(config)
    assert comparison.section["probes"] == ["knn", "linear", "mlp"]
    settings = probe_settings(comparison.section, int(comparison.base["seed"]), "compare")
    assert "mlp_acc" in settings.table_columns(TABLE_COLUMNS)
    transfer = resolve_transfer(config)
    assert transfer.section["probes"] == ["knn", "linear", "mlp"]


def test_evaluate_command_line_accepts_the_mlp_probe():
    parser = build_parser("evaluate")
    args = parser.parse_args(["evaluate", "last.ckpt", "--probes", "knn", "linear", "mlp"])
    assert args.probes == ["knn", "linear", "mlp"]
    assert parser.parse_args(["evaluate", "last.ckpt"]).probes == ["knn", "linear"]  # the default is unchanged


def test_the_mlp_column_reaches_the_comparison_table(tmp_path):
    # The raw-pixel row of a comparison, through run_probes and the report, without training.
    try:
        data = probe_data("digits", limit_train=300, limit_test=100)
    except DatasetNotFoundError as err:  # pragma: no cover - digits ships with scikit-learn
        pytest.skip(str(err))
    settings = ProbeSettings(("knn", "linear", "mlp"), knn_k=10)
    rows, _ = pixel_rows(data, settings, echo=lambda line: None)
    assert 0.5 < rows[0]["mlp_acc"] <= 1.0 and rows[0]["mlp_epoch"] >= 1
    files = write_report(rows, tmp_path, stem="comparison", columns=settings.table_columns(TABLE_COLUMNS))
    assert "| method | position | knn_acc | linear_acc | mlp_acc |" in files["markdown"].read_text()
    assert "mlp_acc" in files["csv"].read_text().splitlines()[0]
