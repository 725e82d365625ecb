"""Data of ``python -m tasks.enas``: one loader alternating child and controller batches.

The training images are split (seeded) into a training part, on which the child learns, and
``val_size`` validation images, which reward the controller and score the sampled
architectures (Fashion-MNIST, CIFAR-10 as in the paper, or synthetic images for tests);
``augment`` adds random crops (and flips for CIFAR-10) to the child's training images.
Every epoch the loader yields ``child_steps`` batches of ``child_batch`` training images,
then ``controller_steps`` batches of ``reward_batch`` validation images; each batch is
``(images, labels, from_val)`` so the task knows which step it is. Under DDP both batch sizes
stay global: every process draws the same global batches and takes its own contiguous share
(``child_batch / world_size`` and ``reward_batch / world_size`` images).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, List

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from .common.data import TensorImageDataset, cifar10, fashion_mnist, split_indices, synthetic_images

DATASETS = ("fashion-mnist", "cifar10", "synthetic")
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SYNTHETIC_STATS = ((0.5,), (0.25,))
SYNTHETIC_SIZE = 6000


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


@dataclasses.dataclass
class EnasData:
    loader: DataLoader  # the alternating training loader
    eval_images: torch.Tensor  # (eval_size, C, H, W) normalised, for the per-epoch scores
    eval_labels: torch.Tensor  # (eval_size,)
    in_channels: int
    num_classes: int


def build_data(cfg, rank: int = 0, world_size: int = 1) -> EnasData:
    """The loader and the fixed evaluation images for an :class:`tasks.enas.EnasConfig`.

    The loader yields process ``rank``'s share of every global batch; the evaluation images
    are all ``eval_size`` of them (the task splits them over the processes itself).
    """
    check_world_size(cfg.child_batch, cfg.reward_batch, world_size)
    pad, flip = 2, False
    if cfg.dataset == "fashion-mnist":
        train, _ = fashion_mnist(cfg.data_root, cfg.download)
        images, labels, stats = train.data, train.targets, FASHION_MNIST_STATS
    elif cfg.dataset == "cifar10":
        train, _ = cifar10(cfg.data_root, cfg.download)
        images = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        labels, stats, pad, flip = torch.tensor(train.targets), CIFAR10_STATS, 4, True
    else:
        images, labels = synthetic_images(SYNTHETIC_SIZE, seed=cfg.seed + 1)
        stats = SYNTHETIC_STATS
    if cfg.val_size >= len(labels):
        raise ValueError(f"val_size={cfg.val_size} leaves no training images out of {len(labels)}")
    val_idx, train_idx = split_indices(len(labels), [cfg.val_size, None], cfg.seed)
    train_ds = TensorImageDataset(images[train_idx], labels[train_idx], *stats,
                                  pad=pad if cfg.augment else 0, flip=flip and cfg.augment)
    val_ds = TensorImageDataset(images[val_idx], labels[val_idx], *stats)
    sampler = AlternatingBatches(len(train_ds), len(val_ds), cfg.child_steps, cfg.child_batch,
                                 cfg.controller_steps, cfg.reward_batch, cfg.seed, rank, world_size)
    loader = DataLoader(ConcatDataset([Tagged(train_ds, False), Tagged(val_ds, True)]), batch_sampler=sampler,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    eval_items = [val_ds[i] for i in range(cfg.eval_size)]  # the first eval_size validation images
    eval_images = torch.stack([x for x, _ in eval_items])  # (eval_size, C, H, W)
    eval_labels = torch.stack([y for _, y in eval_items])
    return EnasData(loader, eval_images, eval_labels, eval_images.shape[1], 10)
