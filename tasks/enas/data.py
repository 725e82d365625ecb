"""Data of ``python -m tasks.enas``: one loader alternating child and controller batches.

The training images are split (seeded) into a training part, on which the child learns, and
``val_size`` validation images, which reward the controller and score the sampled
architectures (Fashion-MNIST, CIFAR-10 as in the paper, or synthetic images for tests);
``augment`` adds random crops (and flips for CIFAR-10) to the child's training images.
Every epoch the loader yields ``child_steps`` batches of ``child_batch`` training images,
then ``controller_steps`` batches of ``reward_batch`` validation images; each batch is
``(images, labels, from_val)`` so the task knows which step it is. Under DDP both batch sizes
stay global: every process draws the same global batches and takes its own contiguous share
(``child_batch / world_size`` and ``reward_batch / world_size`` images). :class:`EnasData`
is the LightningDataModule; it also holds the ``eval_size`` fixed validation images that the
sampled architectures are scored on at the end of every epoch.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from ..common.data import tensor_images, train_val_datasets

class Tagged(Dataset):
    """``(image, label, tag)`` items of ``dataset``: the tag says which part they come from."""

    def __init__(self, dataset: Dataset, tag: bool) -> None:
        self.dataset, self.tag = dataset, tag

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, y, self.tag


class AlternatingBatches(Sampler[List[int]]):
    """Batch sampler over ``ConcatDataset([train, val])``: child batches, then controller batches.

    Each epoch draws a fresh random order from a generator seeded by ``(seed, epoch)``;
    Lightning sets the epoch through ``batch_sampler.sampler.set_epoch``, so ``sampler`` is
    this object itself.

    ``child_batch`` and ``reward_batch`` are global batch sizes: with ``world_size`` processes
    every process draws the same global batches (same generator) and yields its share, the
    ``rank``-th of ``world_size`` contiguous equal parts of each. Both must therefore be
    multiples of ``world_size`` (``ValueError`` otherwise); ``world_size=1`` yields whole batches.
    """

    def __init__(self, n_train: int, n_val: int, child_steps: int, child_batch: int,
                 controller_steps: int, reward_batch: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        check_world_size(child_batch, reward_batch, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.n_train, self.n_val = n_train, n_val
        self.child_steps, self.child_batch = child_steps, child_batch
        self.controller_steps, self.reward_batch = controller_steps, reward_batch
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.child_steps + self.controller_steps

    @staticmethod
    def _batches(n: int, batch: int, steps: int, offset: int, g: torch.Generator) -> List[List[int]]:
        """``steps`` batches of ``batch`` indices out of ``n``, without repeats until all were used."""
        reps = -(-steps * batch // n)  # ceil
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[: steps * batch]
        return (order.view(steps, batch) + offset).tolist()  # (steps, batch)

    def _share(self, batches: List[List[int]], batch: int) -> List[List[int]]:
        """This process's contiguous part of every global batch."""
        per = batch // self.world_size
        return [b[self.rank * per:(self.rank + 1) * per] for b in batches]

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        child = self._batches(self.n_train, self.child_batch, self.child_steps, 0, g)
        ctrl = self._batches(self.n_val, self.reward_batch, self.controller_steps, self.n_train, g)
        yield from self._share(child, self.child_batch)
        yield from self._share(ctrl, self.reward_batch)


def check_world_size(child_batch: int, reward_batch: int, world_size: int) -> None:
    """``ValueError`` unless both global batch sizes split evenly over ``world_size`` processes."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    for name, batch in (("child_batch", child_batch), ("reward_batch", reward_batch)):
        if batch % world_size:
            raise ValueError(f"{name}={batch} is the global batch of a step and cannot be split evenly over "
                             f"{world_size} processes: choose a multiple of {world_size}")


class EnasData(pl.LightningDataModule):
    """The alternating loader and the fixed evaluation images of an ENAS config.

    :meth:`setup` splits the training images (seeded) into the child's training part and
    ``val_size`` validation images, and keeps the first ``eval_size`` of those (normalised)
    as ``eval_images`` / ``eval_labels``; ``in_channels`` and ``num_classes`` size the child.
    :meth:`train_dataloader` yields this process's share of every global batch.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set = self.val_set = None
        self.eval_images = self.eval_labels = None  # (eval_size, C, H, W) normalised, (eval_size,)
        self.in_channels = self.num_classes = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.cfg
        data = tensor_images(cfg.dataset, cfg.data_root, cfg.download, synthetic_seed=cfg.seed + 1)
        flip = cfg.dataset == "cifar10"  # horizontal flips for CIFAR-10 only, as ENAS
        self.train_set, self.val_set = train_val_datasets(
            data.train_images, data.train_labels, data.stats, cfg.val_size, cfg.seed,
            pad=data.pad if cfg.augment else 0, flip=flip and cfg.augment)
        eval_items = [self.val_set[i] for i in range(cfg.eval_size)]  # the first eval_size validation images
        self.eval_images = torch.stack([x for x, _ in eval_items])  # (eval_size, C, H, W)
        self.eval_labels = torch.stack([y for _, y in eval_items])
        self.in_channels, self.num_classes = data.in_channels, data.num_classes

    def train_dataloader(self) -> DataLoader:
        cfg, trainer = self.cfg, self.trainer
        sampler = AlternatingBatches(len(self.train_set), len(self.val_set), cfg.child_steps, cfg.child_batch,
                                     cfg.controller_steps, cfg.reward_batch, cfg.seed, trainer.global_rank,
                                     trainer.world_size)
        return DataLoader(ConcatDataset([Tagged(self.train_set, False), Tagged(self.val_set, True)]),
                          batch_sampler=sampler, num_workers=cfg.num_workers,
                          persistent_workers=cfg.num_workers > 0)
