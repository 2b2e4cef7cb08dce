"""Pretraining data as a LightningDataModule whose every random draw is a function of the seed.

A run must give the same numbers when it is repeated with the same seed, and when it is
interrupted and resumed, even mid-epoch, even with another number of data-loading workers.
Two pieces make the data side of that exact:

- :class:`EpochSampler`: the order of epoch ``e`` is a permutation drawn from ``(seed, e)``
  alone, sharded across DDP ranks; it can start at any batch of an epoch (a resumed run skips
  exactly the batches it had already trained on, without loading them).
- :class:`SeededAugmentation`: the random crop and flip of image ``i`` in epoch ``e`` are drawn
  from a generator seeded with ``(seed, e, i)``, not from a shared stream whose position would
  depend on how many images a worker had already produced. The global RNG is restored after
  each image, so data loading never moves the stream the model draws from (prior samples,
  shuffled negatives).

Lightning's own mid-epoch resume restores its loop counters but neither skips consumed batches
nor restores random states; :class:`eval.training.resume.ExactResume` records the position and the RNG
states in the checkpoint and hands the position to :attr:`PretrainDataModule.resume_position`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eval.data import HOLDOUT_SPLIT, DataInfo, dataset_labels, dataset_spec, load_dataset, make_transform

__all__ = ["EpochSampler", "PretrainDataModule", "SeededAugmentation", "ShardSampler", "mix_seed"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """One well-spread 63-bit seed from a few integers (SplitMix64 steps)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state & ((1 << 63) - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch order, sharded across ranks, resumable at a batch boundary.

    Yields ``(epoch, index)`` pairs: the epoch travels with each index to
    :class:`SeededAugmentation`, so augmentation draws do not depend on worker processes.
    Every rank gets the same number of whole batches (the remainder of an epoch is dropped,
    as with ``drop_last=True``).

    Args:
        size: Images in the dataset.
        batch_size: Images per batch and rank.
        seed: The run's seed.
        shuffle: A new random order every epoch (else the dataset's order).
        rank, world_size: This process's shard.
        epoch: The epoch of the first iteration (Lightning calls :meth:`set_epoch` afterwards).
        start_batch: Batches of that first iteration to skip (a resumed run); later epochs
            start at batch 0.

    Raises:
        ValueError: Fewer images per rank than one batch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = int(size), int(batch_size), int(seed), shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = self.size // self.world_size
        self.num_batches = self.per_rank // self.batch_size
        if self.num_batches == 0:
            raise ValueError(
                f"{self.size} training images over {self.world_size} process(es) give fewer than one "
                f"batch of {self.batch_size} each: lower data.batch_size or raise data.limit_train"
            )
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        # The full epoch even when resuming mid-epoch: Lightning counts batches from the
        # restored batch index up to this length.
        return self.num_batches * self.batch_size

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5A3C))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        mine = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return mine[: len(self)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0  # only the first iteration after a resume starts late
        chosen = self.indices(epoch)[start * self.batch_size :].tolist()
        return iter([(epoch, index) for index in chosen])


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order: evaluation split across ranks."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = int(size), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))


class SeededAugmentation(Dataset):
    """``dataset[index]`` for items ``(epoch, index)``, with augmentation seeded by ``(seed, epoch, index)``.

    The transform inside ``dataset`` draws from torch's global generator (torchvision's
    transforms do); here that generator is seeded for this one image and restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, index = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[index]


class PretrainDataModule(pl.LightningDataModule):
    """Training (augmented, one view per image unless a method's transform says otherwise) and
    held-out (evaluation transform) splits of a configuration's ``data`` section.

    Args:
        data: The ``data`` section of a resolved configuration.
        seed: The run's seed (order and augmentation).
        train_transform: Replaces the built training transform (two-view methods).

    Attributes:
        resume_position: ``(epoch, batch)`` where the next training iteration starts; set by
            :class:`eval.training.resume.ExactResume` when a checkpoint is loaded.

    Raises:
        ValueError: Unknown dataset or split (on construction).
        eval.data.DatasetNotFoundError: The dataset is not on this machine (in :meth:`setup`).
    """

    def __init__(self, data: Mapping[str, Any], seed: int, train_transform: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self.config = dict(data)
        self.seed = int(seed)
        self.spec = dataset_spec(self.config["dataset"])
        self.image_size = int(self.config["image_size"] or self.spec.default_image_size)
        self.channels = int(self.config["channels"] or self.spec.channels)
        if self.config["holdout"]:
            self.config["val_split"] = HOLDOUT_SPLIT  # the carved images are the held-out split
        elif self.config["val_split"] not in self.spec.splits:
            raise ValueError(
                f"data.val_split: {self.spec.name} has splits {', '.join(self.spec.splits)}; "
                f"got {self.config['val_split']!r}"
            )
        self.train_transform = train_transform
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.resume_position: tuple[int, int] = (0, 0)

    def setup(self, stage: str | None = None) -> None:
        """Loads both splits once (it is called again by Lightning, then it does nothing)."""
        if self.train_set is not None:
            return
        cfg = self.config
        common = {
            "root": cfg["root"],
            "download": cfg["download"],
            "image_size": self.image_size,
            "channels": self.channels,
        }
        transform = self.train_transform or make_transform(
            self.spec, self.image_size, self.channels, train=True, crop=cfg["crop"], flip=cfg["flip"]
        )
        common["holdout"] = cfg["holdout"]
        self.train_set = load_dataset(cfg["dataset"], "train", transform=transform, limit=cfg["limit_train"], **common)
        self.val_set = load_dataset(cfg["dataset"], cfg["val_split"], limit=cfg["limit_val"], **common)

    def use_train_transform(self, transform: Callable[[Any], Any]) -> None:
        """Trains on ``transform``'s output from now on (multi-view methods bring their own views).

        The model is built from :meth:`info`, which loads the data, and the model knows its
        views: so the training split is read again (from the dataset's in-memory cache).
        """
        self.train_transform = transform
        if self.train_set is not None:
            self.train_set = self.val_set = None
            self.setup()

    def info(self) -> DataInfo:
        """Sizes and classes, for building the model (loads the data if needed)."""
        self.setup()
        assert self.train_set is not None
        num_classes = self.spec.num_classes
        if num_classes is None:  # image folders: count the labels
            num_classes = int(dataset_labels(self.train_set).max()) + 1
        return DataInfo(self.spec, self.image_size, self.channels, int(num_classes), len(self.train_set))

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        rank, world = self._rank_and_world()
        epoch, start = self.resume_position
        sampler = EpochSampler(
            len(self.train_set),
            self.config["batch_size"],
            self.seed,
            rank=rank,
            world_size=world,
            epoch=epoch,
            start_batch=start,
        )
        workers = int(self.config["num_workers"])
        return DataLoader(
            SeededAugmentation(self.train_set, self.seed),
            batch_size=self.config["batch_size"],
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Our own generator: creating the loader's iterator draws a base seed from it,
            # which would otherwise move the global stream the model draws from.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val_set is not None
        rank, world = self._rank_and_world()
        workers = int(self.config["num_workers"])
        return DataLoader(
            self.val_set,
            batch_size=self.config["batch_size"],
            sampler=ShardSampler(len(self.val_set), rank, world),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),
        )
