"""The datasets of ``python -m tasks.classify``: train / validation / test splits and loaders.

``build_datasets(cfg) -> ClassifyData`` with ``train``, ``val`` and ``test`` datasets, the
number of classes and the input channels:

- ``fashion-mnist``: 60000 training images (``val_size`` of them held out for validation),
  the 10000 test images; random crops (pad 2) and flips when ``augment``.
- ``cifar10``: likewise (50000 / 10000, pad 4).
- ``imagefolder``: ``data_root/train`` for training (``val_size`` held out), ``data_root/val``
  for the test (what ImageNet papers report); random-resized crops and flips at
  ``image_size``, centre crops for evaluation.
- ``synthetic``: class templates plus noise (:func:`tasks.common.data.synthetic_images`),
  Fashion-MNIST-shaped, for tests and machines without data.

``train_subset`` / ``test_subset`` keep a random (seeded) part of the training / test set.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .common.data import TensorImageDataset, cifar10, fashion_mnist, image_folder, split_indices, synthetic_images

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "synthetic")
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SYNTHETIC_SIZES = (6000, 1000)  # train, test


@dataclasses.dataclass
class ClassifyData:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int


def _subset(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, split_indices(len(ds), [n], seed)[0].tolist())


def _split_train(images, labels, stats, cfg, pad: int, flip: bool):
    """Hold ``val_size`` images out of the training tensors, then subsample the rest."""
    val_idx, train_idx = split_indices(len(labels), [cfg.val_size, None], cfg.seed)
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    aug = cfg.augment
    train = TensorImageDataset(images[train_idx], labels[train_idx], *stats, pad=pad if aug else 0, flip=flip and aug)
    val = TensorImageDataset(images[val_idx], labels[val_idx], *stats)
    return train, val


def _tensor_data(cfg) -> ClassifyData:
    if cfg.dataset == "fashion-mnist":
        tr, te = fashion_mnist(cfg.data_root, cfg.download)
        tr_x, tr_y, te_x, te_y = tr.data, tr.targets, te.data, te.targets
        stats, pad = FASHION_MNIST_STATS, 2
    elif cfg.dataset == "cifar10":
        tr, te = cifar10(cfg.data_root, cfg.download)
        # (N, H, W, C) uint8 numpy -> (N, C, H, W)
        tr_x = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
        te_x = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
        tr_y, te_y = torch.tensor(tr.targets), torch.tensor(te.targets)
        stats, pad = CIFAR10_STATS, 4
    else:  # synthetic
        tr_x, tr_y = synthetic_images(SYNTHETIC_SIZES[0], seed=1)
        te_x, te_y = synthetic_images(SYNTHETIC_SIZES[1], seed=2)
        stats, pad = ((0.5,), (0.25,)), 2
    train, val = _split_train(tr_x, tr_y, stats, cfg, pad, flip=True)
    test = _subset(TensorImageDataset(te_x, te_y, *stats), cfg.test_subset, cfg.seed)
    return ClassifyData(train, val, test, 10, tr_x.shape[1] if tr_x.dim() == 4 else 1)


def _folder_data(cfg) -> ClassifyData:
    from torchvision import transforms as T

    norm = T.Normalize(*IMAGENET_STATS)
    size = cfg.image_size
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
                         if cfg.augment else [T.Resize(int(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(), norm])
    train_all, test = image_folder(cfg.data_root, train_tf, eval_tf)
    # the validation images come from the training folder, shown without augmentation
    from torchvision.datasets import ImageFolder
    eval_view = ImageFolder(train_all.root, eval_tf)
    val_idx, train_idx = split_indices(len(train_all), [cfg.val_size, None], cfg.seed)
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    train, val = Subset(train_all, train_idx.tolist()), Subset(eval_view, val_idx.tolist())
    return ClassifyData(train, val, _subset(test, cfg.test_subset, cfg.seed), len(train_all.classes), 3)


def build_datasets(cfg) -> ClassifyData:
    """The train / val / test datasets of ``cfg.dataset`` (see the module docstring)."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; known datasets: {', '.join(DATASETS)}")
    data = _folder_data(cfg) if cfg.dataset == "imagefolder" else _tensor_data(cfg)
    if len(data.train) < cfg.batch_size:
        raise ValueError(f"train set of {len(data.train)} images is smaller than one batch of {cfg.batch_size} "
                         f"(batch {cfg.batch!r}); raise train_subset or use a smaller batch")
    return data


def make_loaders(cfg, data: ClassifyData, batch_size: Optional[int] = None):
    """(train, val, test) DataLoaders; training batches of ``batch_size`` (default G*S), shuffled,
    full batches only (each splits into the virtual devices' equal chunks)."""
    common = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    batch_size = cfg.batch_size if batch_size is None else batch_size
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True, **common)
    val = DataLoader(data.val, batch_size=cfg.eval_batch_size, **common)
    test = DataLoader(data.test, batch_size=cfg.eval_batch_size, **common)
    return train, val, test
