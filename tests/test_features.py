"""Frozen feature extraction: shapes, evaluation mode, the on-disk cache, the raw-pixel row."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import dim_ssl
from eval.data import dataset_labels, load_dataset
from eval.probes.features import extract_features, feature_cache_key, raw_pixel_features

N = 40  # digits test images: a few batches of 16


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("digits", "test", limit=N)


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return dim_ssl.TimmEncoder("test_resnet", in_chans=1, global_dim=16, hidden_dim=32)


class CountingModel(nn.Module):
    """A small model with BatchNorm whose ``features`` calls are counted per position."""

    feature_positions = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.calls: dict[str, int] = {"a": 0, "b": 0}

    @torch.no_grad()
    def features(self, x: torch.Tensor, position: str = "a") -> torch.Tensor:
        self.calls[position] += 1
        out = self.net(x)
        return out if position == "a" else out[:, :3] * 2


class MultiCountingModel(CountingModel):
    def __init__(self) -> None:
        super().__init__()
        self.multi_calls = 0

    @torch.no_grad()
    def multi_features(self, x, positions):
        self.multi_calls += 1
        out = self.net(x)
        return {p: (out if p == "a" else out[:, :3] * 2) for p in positions}


def test_shapes_and_labels_per_position(encoder, dataset):
    positions = ("pool", "conv", "fc", "y")
    result = extract_features(encoder, dataset, positions=positions, batch_size=16, progress=False)
    assert list(result) == list(positions)
    side = encoder.feature_map_size(32)
    widths = {"pool": encoder.pooled_dim, "conv": encoder.feature_channels * side * side, "fc": 32, "y": 16}
    for position, (features, labels) in result.items():
        assert features.shape == (N, widths[position]) and features.dtype == np.float32
        np.testing.assert_array_equal(labels, dataset_labels(dataset))
        assert labels.dtype == np.int64


def test_extraction_uses_eval_mode_and_restores_every_flag(encoder, dataset):
    encoder.train()
    encoder.fc.eval()  # a part kept in eval mode on purpose must stay so
    modes = {name: m.training for name, m in encoder.named_modules()}
    stats = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k or "num_batches" in k}

    features, _ = extract_features(encoder, dataset, batch_size=16, progress=False)["pool"]

    assert {name: m.training for name, m in encoder.named_modules()} == modes
    for key, value in stats.items():  # BatchNorm did not update its running statistics
        assert torch.equal(encoder.state_dict()[key], value), key
    # ... and the features are the evaluation-mode ones.
    images = torch.stack([dataset[i][0] for i in range(N)])
    expected = encoder.eval().features(images, "pool").numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_a_dataloader_is_used_as_given(encoder, dataset):
    loader = DataLoader(dataset, batch_size=7, shuffle=False)
    features, labels = extract_features(encoder, loader, positions=("y",), progress=False)["y"]
    assert features.shape == (N, 16) and len(labels) == N


def test_cache_hit_returns_identical_arrays_without_calling_the_model(tmp_path, dataset):
    model = CountingModel()
    first = extract_features(
        model,
        dataset,
        positions=("a", "b"),
        batch_size=16,
        cache_dir=tmp_path,
        cache_key="run-1|digits|test",
        progress=False,
    )
    calls = dict(model.calls)
    assert calls == {"a": 3, "b": 3}  # 40 images in batches of 16, one call per position
    assert len(list(tmp_path.glob("*.npz"))) == 2

    second = extract_features(
        model,
        dataset,
        positions=("a", "b"),
        batch_size=16,
        cache_dir=tmp_path,
        cache_key="run-1|digits|test",
        progress=False,
    )
    assert model.calls == calls  # not called again
    for position in ("a", "b"):
        np.testing.assert_array_equal(first[position][0], second[position][0])
        np.testing.assert_array_equal(first[position][1], second[position][1])

    extract_features(
        model,
        dataset,
        positions=("a",),
        batch_size=16,
        cache_dir=tmp_path,
        cache_key="run-2|digits|test",
        progress=False,
    )
    assert model.calls["a"] == calls["a"] + 3  # another key is another checkpoint: extracted


def test_only_the_missing_positions_are_extracted(tmp_path, dataset):
    model = CountingModel()
    extract_features(model, dataset, positions=("a",), batch_size=16, cache_dir=tmp_path, cache_key="k", progress=False)
    extract_features(
        model, dataset, positions=("a", "b"), batch_size=16, cache_dir=tmp_path, cache_key="k", progress=False
    )
    assert model.calls == {"a": 3, "b": 3}


def test_one_forward_per_batch_for_all_positions_when_the_model_offers_it(dataset):
    model = MultiCountingModel()
    result = extract_features(model, dataset, positions=("b", "a"), batch_size=16, progress=False)
    assert model.multi_calls == 3 and model.calls == {"a": 0, "b": 0}
    assert result["b"][0].shape == (N, 3)


def test_cache_key_follows_the_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    key = feature_cache_key(checkpoint, "digits", "test", image_size=32)
    assert str(checkpoint) in key and "digits" in key and "test" in key
    assert feature_cache_key(checkpoint, "digits", "train", image_size=32) != key
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # overwritten later
    assert feature_cache_key(checkpoint, "digits", "test", image_size=32) != key
    with pytest.raises(FileNotFoundError):
        feature_cache_key(tmp_path / "missing.ckpt", "digits", "test")


def test_misuse_is_refused(tmp_path, dataset):
    model = CountingModel()
    with pytest.raises(ValueError, match="cache_key"):
        extract_features(model, dataset, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_features(model, dataset, positions=(), progress=False)
    two_views = load_dataset("digits", "test", limit=4, transform=lambda x: [x, x])
    with pytest.raises(ValueError, match="evaluation transform"):
        extract_features(model, two_views, positions=("a",), progress=False)


def test_raw_pixel_features_flatten_the_model_inputs(dataset):
    features, labels = raw_pixel_features(dataset, batch_size=16, progress=False)
    assert features.shape == (N, 1 * 32 * 32) and features.dtype == np.float32
    np.testing.assert_array_equal(labels, dataset_labels(dataset))
    np.testing.assert_allclose(features[0], dataset[0][0].flatten().numpy())
