"""The data of ``python -m tasks.classify``: a LightningDataModule of train / validation / test.

- ``fashion-mnist``: 60000 training images (``val_size`` of them held out for validation),
  the 10000 test images; random crops (pad 2) and flips when ``augment``.
- ``cifar10``: likewise (50000 / 10000, pad 4).
- ``imagefolder``: ``data_root/train`` for training (``val_size`` held out), ``data_root/val``
  for the test (what ImageNet papers report); random-resized crops and flips at
  ``image_size``, centre crops for evaluation.
- ``synthetic``: noisy gratings (:func:`tasks.common.data.synthetic_images`),
  Fashion-MNIST-shaped, for tests and machines without data.

``train_subset`` / ``test_subset`` keep a random (seeded) part of the training / test set.
Training batches hold each process's share of the ``GxS`` batch (G*S images on one process).
"""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Subset

from ..common.mixins import BatchLoaders
from ..common.data import (IMAGENET_STATS, TensorImageDataset, image_folder, split_indices, tensor_images,
                           train_val_datasets)
from .config import ClassifyConfig


def _subset(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, split_indices(len(ds), [n], seed)[0].tolist())


class ClassifyData(BatchLoaders, pl.LightningDataModule):
    """Train / validation / test sets of ``cfg.dataset`` and their loaders.

    :meth:`setup` loads the sets once (``num_classes`` and ``in_channels`` are known from
    then on, to size the network); :meth:`train_dataloader` yields shuffled full batches of
    this process's share of the batch setting, so that each splits into equal device chunks.
    """

    def __init__(self, cfg: ClassifyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set = self.val_set = self.test_set = None
        self.num_classes = self.in_channels = None
        self._stats_loader = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.cfg
        if cfg.dataset == "imagefolder":
            self._folder_sets()
        else:
            self._tensor_sets()
        if len(self.train_set) < cfg.batch_size:
            raise ValueError(f"train set of {len(self.train_set)} images is smaller than one batch of "
                             f"{cfg.batch_size} (batch {cfg.batch!r}); raise train_subset or use a smaller batch")

    def _tensor_sets(self) -> None:
        cfg = self.cfg
        data = tensor_images(cfg.dataset, cfg.data_root, cfg.download)
        self.train_set, self.val_set = train_val_datasets(
            data.train_images, data.train_labels, data.stats, cfg.val_size, cfg.seed, cfg.train_subset,
            pad=data.pad if cfg.augment else 0, flip=cfg.augment)
        self.test_set = _subset(TensorImageDataset(data.test_images, data.test_labels, *data.stats),
                                cfg.test_subset, cfg.seed)
        self.num_classes, self.in_channels = data.num_classes, data.in_channels

    def _folder_sets(self) -> None:
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        cfg, norm, size = self.cfg, T.Normalize(*IMAGENET_STATS), self.cfg.image_size
        eval_tf = T.Compose([T.Resize(int(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(), norm])
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
                             if cfg.augment else eval_tf.transforms)
        train_all, test = image_folder(cfg.data_root, train_tf, eval_tf)
        eval_view = ImageFolder(train_all.root, eval_tf)  # validation images come from train/, unaugmented
        val_idx, train_idx = split_indices(len(train_all), [cfg.val_size, None], cfg.seed)
        if cfg.train_subset is not None:
            train_idx = train_idx[: cfg.train_subset]
        self.train_set, self.val_set = Subset(train_all, train_idx.tolist()), Subset(eval_view, val_idx.tolist())
        self.test_set = _subset(test, cfg.test_subset, cfg.seed)
        self.num_classes, self.in_channels = len(train_all.classes), 3

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.cfg.eval_batch_size)
