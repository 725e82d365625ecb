"""Pieces shared by the tasks' Lightning modules and data modules (classify, detect).

API:
    BatchLoaders   a LightningDataModule mixin: loaders of a GxS batch setting split over the
                   Trainer's processes, and the training batches of SN's batch average
    Throughput     a LightningModule mixin: ``train/throughput`` (images/s between steps)
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from torch.utils.data import DataLoader, Dataset

from .config import batch_layout


class BatchLoaders:
    """For a data module with ``cfg`` (``batch``, ``num_workers``, ``eval_batch_size``),
    ``train_set``, ``val_set`` and ``_stats_loader = None`` set in its ``__init__``; a subclass
    may set ``collate_fn``."""

    collate_fn: Optional[Callable] = None

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
                          persistent_workers=workers > 0, collate_fn=type(self).collate_fn)

    def per_process_batch(self) -> int:
        """Images per training batch in this process: G*S over the processes of the Trainer."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return batch_layout(self.cfg.batch, world)[0]

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.per_process_batch(), train=True)

    def stats_loader(self) -> DataLoader:
        """Training batches for SN's batch average (:func:`sn.update_stats`), made once."""
        if self._stats_loader is None:
            self._stats_loader = self.train_dataloader()
        return self._stats_loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.cfg.eval_batch_size)


class Throughput:
    """Logs ``train/throughput``, the images of a step over the time since the previous step of
    the same epoch (validation in between does not count)."""

    _t_last: Optional[float] = None

    def log_throughput(self, n: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/throughput", n / max(now - self._t_last, 1e-9), batch_size=n)
        self._t_last = now

    def on_train_epoch_start(self) -> None:
        self._t_last = None
