"""``dim-ssl diagnose``: MI estimates, the NDM of y and the probes of tiny DIM and SimCLR runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from pretrain_helpers import QUICKSTART, TINY

from eval.cli import main
from eval.experiments.diagnose import encoder_samples, representation_position
from eval.probes.suite import ProbeSettings, model_features, probe_data, run_probes
from eval.training.checkpoint import model_from_checkpoint
from eval.training.config import resolve_config
from eval.training.pretrain import pretrain

# The estimators' critics trained for a few epochs only: these tests check the plumbing, not
# the estimates (tests/test_analysis*.py check those on variables of known MI).
# 80 held-out images: the estimators hold out 30% of the pairs, split in two halves of >= 8.
FAST = ["--max-epochs", "3", "--knn-k", "10", "--limit-test", "80"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny DIM(L) run and one tiny SimCLR run on digits."""
    folder = tmp_path_factory.mktemp("diagnose")
    found = {}
    for label, extra in (("dim-l", []), ("simclr", ["method.name=simclr"])):
        config = resolve_config(QUICKSTART, [*TINY, *extra, f"output_dir={folder / label}"])
        found[label] = pretrain(config, echo=lambda line: None)["last_checkpoint"]
    return folder, found


def test_the_representation_is_y_where_the_method_trains_it_else_pool(checkpoints):
    _, found = checkpoints
    dim, simclr = model_from_checkpoint(found["dim-l"]), model_from_checkpoint(found["simclr"])
    assert representation_position(dim) == "y" and representation_position(simclr) == "pool"
    assert representation_position(dim, "fc") == "fc"
    assert representation_position(simclr, "proj") == "proj"
    with pytest.raises(ValueError, match="got 'y'"):
        representation_position(simclr, "y")  # SimCLR's summary MLP is never trained


def test_samples_pair_each_image_with_a_location_of_its_own_map_and_its_own_y(checkpoints):
    _, found = checkpoints
    model = model_from_checkpoint(found["dim-l"])
    data = probe_data("digits", 32, 1, limit_train=8, limit_test=20)
    samples = encoder_samples(model, data.test, "y", seed=3, batch_size=7)  # batches of 7, 7, 6
    images = torch.stack([data.test[i][0] for i in range(20)])
    with torch.no_grad():
        encoded = model.encoder.encode(images)
    np.testing.assert_allclose(samples["x"], images.flatten(1).numpy())
    np.testing.assert_allclose(samples["y"], model.features(images, "y").numpy(), rtol=1e-5, atol=1e-6)
    vectors = encoded.feature_map.flatten(2).transpose(1, 2).numpy()  # (N, M*M, C)
    chosen = []
    for i, local in enumerate(samples["local"]):
        matches = np.flatnonzero(np.abs(vectors[i] - local).max(axis=1) < 1e-5)
        assert matches.size, f"image {i}: its local vector is not a location of its own map"
        chosen.append(int(matches[0]))
    assert len(set(chosen)) > 1  # locations drawn at random, not always the same one
    again = encoder_samples(model, data.test, "y", seed=3)
    np.testing.assert_array_equal(again["local"], samples["local"])  # the seed fixes them
    # A position the method adds (SimCLR's projection output) comes from the same pass.
    simclr = model_from_checkpoint(found["simclr"])
    projected = encoder_samples(simclr, data.test, "proj")["y"]
    np.testing.assert_allclose(projected, simclr.features(images, "proj").numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def diagnosed(checkpoints):
    folder, found = checkpoints
    out = folder / "diagnose"
    args = ["diagnose", found["dim-l"], found["simclr"], "--labels", "DIM(L),SimCLR", "--out", str(out), *FAST]
    assert main(args) == 0
    return out, found


def test_diagnose_writes_one_row_per_checkpoint_with_every_measure(diagnosed):
    out, found = diagnosed
    rows = json.loads((out / "diagnose.json").read_text())
    assert [(r["label"], r["method"], r["representation"], r["dims"]) for r in rows] == [
        ("DIM(L)", "dim", "y", 64),
        ("SimCLR", "simclr", "pool", rows[1]["dims"]),
    ]
    for row in rows:
        assert math.isfinite(row["mi_x_y"]) and math.isfinite(row["mi_local_y"])
        assert row["ndm"] >= 0
        assert row["test_images"] == 80 and row["train_images"] == 64  # --limit-test; the runs' limit_train
    with open(out / "diagnose.csv", newline="") as file:
        assert [r["label"] for r in csv.DictReader(file)] == ["DIM(L)", "SimCLR"]
    assert (out / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["x"] == "the normalised image, flattened" and resolved["estimator"] == "dv"


def test_the_probe_columns_are_the_harness_probes_on_the_representation(diagnosed):
    out, found = diagnosed
    rows = {r["label"]: r for r in json.loads((out / "diagnose.json").read_text())}
    data = probe_data("digits", 32, 1, limit_train=64, limit_test=80)
    settings = ProbeSettings(("knn", "linear"), 10, 0.1, 0)
    for label, name, position in (("DIM(L)", "dim-l", "y"), ("SimCLR", "simclr", "pool")):
        model = model_from_checkpoint(found[name])
        expected = run_probes(*model_features(model, data, [position], progress=False)[position], settings)
        assert (rows[label]["knn_acc"], rows[label]["linear_acc"]) == (expected["knn_acc"], expected["linear_acc"])


def test_mistakes_are_one_line(diagnosed, tmp_path, capsys):
    _, found = diagnosed
    assert main(["diagnose", str(tmp_path / "missing.ckpt")]) == 2  # a checkpoint error: status 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dim-ssl diagnose: error: checkpoint {tmp_path / 'missing.ckpt'} not found"
    ]
    assert main(["diagnose", found["dim-l"], "--labels", "A,B"]) == 1
    assert "2 labels for 1 checkpoints" in capsys.readouterr().err
    assert main(["diagnose", found["dim-l"], "--position", "y,proj"]) == 1
    assert "2 positions for 1 checkpoints" in capsys.readouterr().err
