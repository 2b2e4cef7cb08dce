"""Data sources: the registry, digits, Fashion-MNIST from Debian's files, errors, transforms."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eval.data import (
    ImageArrayDataset,
    StagedTransform,
    dataset_labels,
    dataset_spec,
    load_dataset,
    make_transform,
    read_idx,
)
from eval.data import datasets as data
from eval.errors import DatasetNotFoundError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    """An empty data root, and no $DIM_SSL_DATA leaking in from the environment."""
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    return tmp_path


# ---- registry


def test_spec_knows_sizes_channels_classes_and_flip():
    digits = dataset_spec("digits")
    assert (digits.image_size, digits.channels, digits.num_classes) == (8, 1, 10)
    assert digits.hflip is False  # a flipped digit is another symbol
    assert dataset_spec("fashion-mnist").hflip is True
    cifar = dataset_spec("cifar10")
    assert len(cifar.mean) == len(cifar.std) == cifar.channels == 3
    assert dataset_spec("stl10").splits == ("train", "test", "unlabeled", "train+unlabeled")


def test_unknown_name_is_a_value_error_listing_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-9000'") as info:
        dataset_spec("imagenet-9000")
    for name in ("digits", "fashion-mnist", "cifar10", "imagefolder:PATH"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known"):
        load_dataset("imagenet-9000")


def test_unknown_split_and_bad_limit_are_refused():
    with pytest.raises(ValueError, match="splits train, test; got 'extra'"):
        load_dataset("digits", "extra")
    with pytest.raises(ValueError, match="limit"):
        load_dataset("digits", limit=0)


# ---- digits


def test_digits_split_is_stratified_deterministic_and_disjoint():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    train_labels, test_labels = dataset_labels(train), dataset_labels(test)
    assert set(train_labels) == set(test_labels) == set(range(10))
    # Stratified: every class has about a fifth of its images in the test split.
    counts = np.bincount(test_labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    # Deterministic: a second load gives the same images in the same order.
    again = load_dataset("digits", "train")
    assert torch.equal(train.images, again.images) and torch.equal(train.targets, again.targets)
    # Disjoint: no source row of scikit-learn's digits is in both splits.
    _, _, splits = data._digits_arrays()
    assert not set(splits["train"]) & set(splits["test"])


def test_digits_items_are_upsampled_normalised_tensors():
    dataset = load_dataset("digits", "test")
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (1, 32, 32)
    assert isinstance(label, int) and 0 <= label <= 9
    # At the native size, normalisation with the spec's statistics gives mean 0 and std 1.
    native = load_dataset("digits", "train", image_size=8)
    stacked = torch.stack([native[i][0] for i in range(len(native))])
    assert abs(stacked.mean().item()) < 0.02 and abs(stacked.std().item() - 1) < 0.02
    spec = dataset_spec("digits")
    raw = stacked * spec.std[0] + spec.mean[0]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6  # 0..16 scaled into [0, 1]


def test_digits_three_channels_repeat_the_grey_channel():
    image, _ = load_dataset("digits", "test", channels=3)[5]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_limit_keeps_first_items_or_a_seeded_subset():
    full_labels = dataset_labels(load_dataset("digits", "train"))
    first = load_dataset("digits", "train", limit=50)
    assert len(first) == 50
    assert np.array_equal(dataset_labels(first), full_labels[:50])
    a = load_dataset("digits", "train", limit=50, limit_seed=1)
    b = load_dataset("digits", "train", limit=50, limit_seed=1)
    c = load_dataset("digits", "train", limit=50, limit_seed=2)
    assert a.indices == b.indices and a.indices != c.indices
    assert np.array_equal(dataset_labels(a), full_labels[a.indices])
    assert len(load_dataset("digits", "test", limit=10_000)) == 360  # larger than the split


def test_holdout_carves_a_fixed_disjoint_validation_split_from_train():
    full = load_dataset("digits", "train")
    rest = load_dataset("digits", "train", holdout=300)
    held = load_dataset("digits", "holdout", holdout=300)
    assert len(held) == 300 and len(rest) == len(full) - 300
    assert not set(rest.indices) & set(held.indices)  # disjoint, and together all of train
    assert sorted(rest.indices + held.indices) == list(range(len(full)))
    assert held.indices != list(range(300))  # a random choice, not the first images ...
    assert load_dataset("digits", "holdout", holdout=300).indices == held.indices  # ... but fixed
    assert torch.equal(held[0][0], full[held.indices[0]][0])
    limited = load_dataset("digits", "train", holdout=300, limit=40)
    assert [rest.indices[i] for i in limited.indices] == rest.indices[:40]


@pytest.mark.parametrize(
    "split, holdout, message",
    [("holdout", None, "give holdout=N"), ("test", 10, "nothing to carve"), ("train", 10_000, "both sides")],
)
def test_bad_holdout_is_refused(split, holdout, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", split, holdout=holdout)


def test_datamodule_with_holdout_never_reads_the_test_split():
    from eval.training.config import resolve_config
    from eval.training.datamodule import PretrainDataModule

    config = resolve_config(None, ["data.dataset=digits", "data.holdout=200"])
    module = PretrainDataModule(config["data"], seed=0)
    module.setup()
    assert len(module.val_set) == 200 and len(module.train_set) == len(load_dataset("digits", "train")) - 200
    assert module.val_set.indices == load_dataset("digits", "holdout", holdout=200).indices


def test_dataloader_with_default_collate_gives_image_batches():
    dataset = load_dataset("digits", "train", train_transform=True, channels=3, limit=20)
    images, labels = next(iter(DataLoader(dataset, batch_size=8, shuffle=True)))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert type(images) is torch.Tensor  # plain tensors, not torchvision's tensor subclasses
    assert labels.shape == (8,) and labels.dtype == torch.int64


# ---- transforms


def test_train_transform_varies_and_eval_transform_is_deterministic():
    spec = dataset_spec("fashion-mnist")
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    train = make_transform(spec, train=True)
    torch.manual_seed(0)
    views = [train(image) for _ in range(10)]
    assert all(v.shape == (1, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])
    evaluate = make_transform(spec, train=False)
    assert torch.equal(evaluate(image), evaluate(image))


def test_augmentations_can_be_switched_off():
    spec = dataset_spec("cifar10")
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    no_aug = make_transform(spec, train=True, crop=False, flip=False)
    assert torch.equal(no_aug(image), make_transform(spec, train=False)(image))
    # Digits: no flip by default, so a crop-free training transform is the identity.
    digits = dataset_spec("digits")
    small = torch.rand(1, 8, 8)
    assert torch.equal(make_transform(digits, train=True, crop=False)(small), make_transform(digits)(small))


def test_eval_transform_pads_28_to_32_and_normalises():
    spec = dataset_spec("fashion-mnist")
    image = torch.full((1, 28, 28), 255, dtype=torch.uint8)
    out = make_transform(spec)(image)
    zero = (0 - spec.mean[0]) / spec.std[0]
    one = (1 - spec.mean[0]) / spec.std[0]
    assert torch.allclose(out[0, 2:30, 2:30], torch.full((28, 28), one))
    assert torch.allclose(out[0, :2], torch.full((2, 32), zero))  # the zero border


def test_colour_to_grey_and_bad_channels():
    spec = dataset_spec("cifar10")
    out = make_transform(spec, channels=1, image_size=16)(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert out.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="channels must be 1 or 3; got 2"):
        make_transform(spec, channels=2)


def _items(dataset, count, seed=0):
    torch.manual_seed(seed)
    return [dataset[i][0] for i in range(count)]


@pytest.mark.parametrize(
    "options",
    [
        {"dataset": "cifar10", "channels": 1, "image_size": 16},  # luminance, then a resize
        {"dataset": "cifar10", "train_transform": True},  # a random crop and flip follow
        {"dataset": "digits", "image_size": 32},  # 8x8 resized up
    ],
)
def test_prepared_in_memory_images_equal_the_per_image_transform(options, monkeypatch):
    # In-memory datasets compute a transform's fixed stage once, batched; every item, augmented
    # ones included (same seed), must be what the transform gives on that image alone.
    options = dict(options)
    name = options.pop("dataset")
    if name == "cifar10":
        images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
        spec = dataset_spec(name)
        transform = make_transform(
            spec, options.get("image_size"), options.get("channels"), train=options.get("train_transform", False)
        )
        dataset = ImageArrayDataset(images, torch.zeros(300, dtype=torch.long), transform)
    else:
        dataset = load_dataset(name, "train", **options)
    assert isinstance(dataset.transform, StagedTransform)
    assert dataset.prepare() and dataset._prepared is not None
    prepared = _items(dataset, 40)
    dataset._prepared_row[:] = -1  # forget: every item from the raw image
    per_image = _items(dataset, 40)
    assert all(torch.equal(a, b) for a, b in zip(prepared, per_image))
    assert all(type(a) is torch.Tensor for a in prepared)


def test_load_dataset_prepares_only_the_images_a_subset_reads():
    held = load_dataset("digits", "train", holdout=300, limit=50)
    base = held.dataset.dataset
    rows = base._prepared_row
    chosen = [held.dataset.indices[i] for i in held.indices]
    assert (rows[chosen] >= 0).all() and int((rows >= 0).sum()) == 50
    assert torch.equal(held[7][0], make_transform(dataset_spec("digits"))(base.images[chosen[7]]))


def test_prepare_declines_what_it_cannot_or_should_not_hold():
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    plain = ImageArrayDataset(images, torch.zeros(20, dtype=torch.long), lambda x: x.float())
    assert not plain.prepare()  # not a StagedTransform: nothing is known to be fixed
    staged = ImageArrayDataset(images, torch.zeros(20, dtype=torch.long), make_transform(dataset_spec("digits")))
    assert not staged.prepare(max_bytes=20 * 32 * 32 * 4 - 1)  # one byte short: per image
    assert staged._prepared is None
    assert staged.prepare(max_bytes=20 * 32 * 32 * 4)


# ---- fashion-mnist


@needs_debian_fashion_mnist
def test_fashion_mnist_loads_from_debian_files_matching_raw_bytes(empty_root):
    train = load_dataset("fashion-mnist", "train", root=empty_root)
    test = load_dataset("fashion-mnist", "test", root=empty_root, image_size=28)
    assert (len(train), len(test)) == (60000, 10000)
    assert train[0][0].shape == (1, 32, 32)

    # Pixel values of one item equal the raw IDX bytes, read here without the module's reader.
    with gzip.open(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    index = 123
    expected = np.frombuffer(raw, dtype=np.uint8, offset=16 + index * 784, count=784).copy()
    with gzip.open(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        expected_label = f.read()[8 + index]
    spec = dataset_spec("fashion-mnist")
    image, label = test[index]
    pixels = (image * spec.std[0] + spec.mean[0]) * 255
    assert torch.allclose(pixels.flatten(), torch.from_numpy(expected).float(), atol=1e-3)
    assert label == expected_label
    assert np.bincount(dataset_labels(test)).tolist() == [1000] * 10


@needs_debian_fashion_mnist
def test_data_root_is_not_written_to_when_reading_debian_files(empty_root):
    load_dataset("fashion-mnist", "test", root=empty_root)
    assert list(empty_root.iterdir()) == []


def test_missing_fashion_mnist_names_the_ways_to_get_it(empty_root, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", empty_root / "no-such-dir")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=empty_root)
    message = str(info.value)
    assert "'fashion-mnist' not found" in message
    assert str(empty_root) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_cifar10_names_data_root_and_download(empty_root):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "test", root=empty_root)
    message = str(info.value)
    assert "'cifar10' not found" in message and str(empty_root) in message
    assert "download=True" in message and "DIM_SSL_DATA" in message


@pytest.mark.parametrize("name,split", [("svhn", "extra"), ("stl10", "unlabeled"), ("mnist", "test")])
def test_missing_torchvision_datasets_are_dataset_not_found(empty_root, name, split):
    with pytest.raises(DatasetNotFoundError, match=name):
        load_dataset(name, split, root=empty_root)


def test_data_root_defaults_to_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path))
    assert data.default_data_root() == tmp_path
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("cifar100")


def test_imagefolder_missing_path_and_a_tiny_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    name = f"imagefolder:{tmp_path / 'imgs'}"
    assert dataset_spec(name).num_classes == 2
    test = load_dataset(name, "test")  # val/ stands in for test/
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == 1
    assert dataset_labels(test).tolist() == [0, 1]


# ---- IDX reader


def test_read_idx_reads_plain_and_gzipped_files_and_refuses_garbage(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(header + values.tobytes())
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(header + values.tobytes())
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), values)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), values)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(header + values.tobytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(tmp_path / "short")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_under_the_data_root_comes_first(empty_root):
    # A tiny fake set in torchvision's layout: it must win over Debian's files.
    raw = empty_root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    test = load_dataset("fashion-mnist", "test", root=empty_root)
    assert len(test) == 3 and dataset_labels(test).tolist() == [0, 1, 2]
    assert test[2][0].shape == (1, 32, 32)
