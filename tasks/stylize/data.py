"""The data of ``python -m tasks.stylize``: content crops in a fixed order, as a LightningDataModule.

The content data is a pure function of ``(seed, sample index)``: :class:`ContentCrops` item
``i`` is always the same crop, and :class:`EpochSampler` gives epoch ``e`` the indices
``e * len .. (e + 1) * len - 1``. Runs with the same seed therefore see the same images in
the same order whatever their normalizer, and a run resumed at an epoch boundary continues
with exactly the crops it would have seen. :class:`StylizeData` serves ``steps_per_epoch``
batches of each process's share of the ``GxS`` batch per epoch, and ``eval_crops`` held-out
crops (an independent stream of the same seed) for the final losses.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..common.config import batch_layout
from .config import StylizeConfig
from .images import bundled_photos, list_images, random_crop, read_image


class ContentCrops(Dataset):
    """Random content crops as a pure function of ``(seed, stream, index)``.

    Args:
        size: side of the square crops.
        length: number of items (one epoch of :class:`EpochSampler`).
        seed: data seed.
        content_dir: a folder of images (read lazily, each resized to a shorter side of
            ``size`` then randomly cropped, as for COCO), or ``None`` for the bundled photos
            (kept in memory, zoomed crops).
        stream: an independent stream of crops for the same seed (0 training, 1 evaluation).

    Item ``i`` may be any non-negative integer (``i >= length`` continues the stream); a
    folder is visited in a fresh seeded order every ``len(files)`` items.
    """

    def __init__(self, size: int, length: int, seed: int = 0, content_dir: Optional[str] = None, stream: int = 0):
        self.size, self.length, self.seed, self.stream = size, length, seed, stream
        self.files = list_images(content_dir) if content_dir else None
        self.images = None if self.files else bundled_photos()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        index = int(index)
        rng = np.random.default_rng([self.seed, self.stream, index])
        if self.files is not None:
            count = len(self.files)
            order = np.random.default_rng([self.seed, self.stream, index // count, 1]).permutation(count)
            image = read_image(self.files[order[index % count]], "content image")
            return random_crop(image, self.size, rng, max_zoom_out=False)
        image = self.images[int(rng.integers(len(self.images)))]
        return random_crop(image, self.size, rng)


class EpochSampler(Sampler):
    """The indices of one epoch of a stream of samples, split over processes.

    Epoch ``e`` (set by Lightning through ``set_epoch``) covers the global indices
    ``e * n * world_size .. (e + 1) * n * world_size - 1``; process ``rank`` takes every
    ``world_size``-th of them, ``n`` in all. A run resumed at an epoch boundary therefore sees
    exactly the samples it would have seen without the interruption.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        start = self.epoch * self.num_samples * self.world_size + self.rank
        return iter(range(start, start + self.num_samples * self.world_size, self.world_size))


class StylizeData(pl.LightningDataModule):
    """Training crops (:class:`ContentCrops` stream 0, :class:`EpochSampler` over the processes)
    and the held-out evaluation crops (stream 1) of a :class:`StylizeConfig`."""

    def __init__(self, cfg: StylizeConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def _loader(self, dataset: Dataset, batch_size: int, **kw) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        cfg, trainer = self.cfg, self.trainer
        per_process, _ = batch_layout(cfg.batch, trainer.world_size)
        crops = ContentCrops(cfg.image_size, cfg.steps_per_epoch * per_process, cfg.seed, cfg.content_dir)
        sampler = EpochSampler(len(crops), trainer.global_rank, trainer.world_size)
        return self._loader(crops, per_process, sampler=sampler, drop_last=True)

    def eval_dataloader(self) -> DataLoader:
        """The ``eval_crops`` fixed held-out crops (the same for every run with the same seed)."""
        cfg = self.cfg
        crops = ContentCrops(cfg.image_size, cfg.eval_crops, cfg.seed, cfg.content_dir, stream=1)
        return DataLoader(crops, batch_size=batch_layout(cfg.batch, 1)[0])
