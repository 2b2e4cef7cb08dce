"""Pretraining data: seeded per-epoch order, resumable sampling, per-image seeded augmentation."""

from __future__ import annotations

import pytest
import torch

from eval.training.config import resolve_config
from eval.training.datamodule import EpochSampler, PretrainDataModule, SeededAugmentation, ShardSampler, mix_seed


def test_the_order_of_an_epoch_depends_on_seed_and_epoch_only():
    a = EpochSampler(100, batch_size=10, seed=3)
    b = EpochSampler(100, batch_size=10, seed=3)
    torch.manual_seed(123)  # the global stream plays no part
    assert list(a) == list(b)
    a.set_epoch(1)
    first, second = [i for _, i in b], [i for _, i in a]
    assert first != second and sorted(first) == sorted(second) == list(range(100))
    assert list(EpochSampler(100, 10, seed=4)) != list(EpochSampler(100, 10, seed=3))
    assert all(epoch == 1 for epoch, _ in a)  # the epoch travels with every index


def test_a_resumed_sampler_starts_after_the_batches_already_done_then_starts_epochs_at_zero():
    full = list(EpochSampler(100, batch_size=8, seed=0, epoch=2))
    resumed = EpochSampler(100, batch_size=8, seed=0, epoch=2, start_batch=5)
    assert len(resumed) == len(full) == 96  # Lightning counts the whole epoch; 4 left over
    assert list(resumed) == full[5 * 8 :]
    resumed.set_epoch(3)
    assert list(resumed) == list(EpochSampler(100, batch_size=8, seed=0, epoch=3))


def test_ranks_get_disjoint_equal_shards_of_the_same_permutation():
    shards = [list(EpochSampler(103, batch_size=5, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [30, 30, 30]
    indices = [i for shard in shards for _, i in shard]
    assert len(set(indices)) == len(indices)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochSampler(10, batch_size=8, seed=0, world_size=2)
    assert [list(ShardSampler(7, r, 2)) for r in range(2)] == [[0, 2, 4, 6], [1, 3, 5]]


def test_augmentation_is_seeded_per_image_and_leaves_the_global_stream_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.rand(3)  # stands for a random crop: draws from the global generator

    data = SeededAugmentation(Noisy(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = data[(0, 4)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    assert torch.equal(data[(0, 4)], first)  # whatever the global state
    assert not torch.equal(data[(1, 4)], first)  # another epoch, another crop
    assert not torch.equal(data[(0, 5)], first)
    assert len({mix_seed(1, e, i) for e in range(20) for i in range(50)}) == 1000


def test_the_data_module_gives_one_augmented_view_per_image_and_plain_held_out_images():
    config = resolve_config("configs/quickstart.yaml", ["data.limit_train=40", "data.batch_size=16"])
    module = PretrainDataModule(config["data"], seed=0)
    info = module.info()
    assert (info.num_classes, info.channels, info.image_size, info.train_size) == (10, 1, 32, 40)
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (16, 1, 32, 32) and labels.shape == (16,)
    assert len(module.train_dataloader()) == 2  # drop_last: 40 // 16
    again, _ = next(iter(module.train_dataloader()))
    assert torch.equal(images, again)  # same seed, same epoch: same batch, same crops
    held_out, _ = next(iter(module.val_dataloader()))
    assert held_out.shape == (16, 1, 32, 32)
    module.resume_position = (0, 1)  # what ExactResume sets from a checkpoint
    resumed = list(module.train_dataloader())
    full = list(PretrainDataModule(config["data"], seed=0).train_dataloader())
    assert len(resumed) == 1 and torch.equal(resumed[0][0], full[1][0])


def test_worker_processes_do_not_change_the_batches():
    config = resolve_config("configs/quickstart.yaml", ["data.limit_train=48", "data.batch_size=16"])
    alone = [images for images, _ in PretrainDataModule(config["data"], seed=0).train_dataloader()]
    config["data"]["num_workers"] = 2
    workers = [images for images, _ in PretrainDataModule(config["data"], seed=0).train_dataloader()]
    assert len(alone) == len(workers) == 3
    assert all(torch.equal(a, b) for a, b in zip(alone, workers))
