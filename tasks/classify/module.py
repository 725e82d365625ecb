"""Image classification under the paper's batch settings (Table 2, Fig. 2, Fig. 4).

    python -m tasks.classify                              # a short real run on Fashion-MNIST
    python -m tasks.classify --norm gn --batch 8x2 --epochs 3
    python -m tasks.classify --experiment table2-quick    # a grid from experiments.yaml
    python -m tasks.classify --help                       # every config key

Batch setting ``GxS``: G virtual devices of S samples. The loader yields G*S images, the
gradient is the mean over all of them, and every batch statistic (the BN baseline's and SN's
BN branch) is computed within each device's S samples (``sn.make_norm(norm, C, devices=G)``).
The learning rate scales linearly: ``lr = base_lr * G*S / ref_batch``.

Evaluation of SN: ``eval_stats: batch_average`` (the paper's default) recomputes the BN-branch
statistics with ``sn.update_stats`` over ``update_stats_batches`` training batches before each
validation and the test; ``moving_average`` uses the running statistics. A network without
SN layers (the BN baseline) always evaluates with its moving averages, as in the paper.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Optional, Tuple

import pytorch_lightning as pl
import sn
import torch
import torch.nn.functional as F

from .classify_data import DATASETS, build_datasets, make_loaders
from .common.config import RunConfig, batch_layout, parse_batch
from .common.runner import Task, build_trainer, main
from .models import MODELS, build_model

SCHEDULES = ("cosine", "step")
EVAL_STATS = ("batch_average", "moving_average")


@dataclasses.dataclass
class ClassifyConfig(RunConfig):
    """The classification task's config (keys of RunConfig plus these)."""

    task: str = "classify"
    run: str = "{norm}_{batch}_s{seed}"  # run name template
    norm: str = "sn"                 # bn, gn, in, ln, sn, sn-inln, ... (sn.norm_names())
    batch: str = "8x16"              # GxS: G devices x S samples per device (loader batch G*S)
    epochs: int = 3                  # training epochs
    dataset: str = "fashion-mnist"   # fashion-mnist, cifar10, imagefolder, synthetic
    data_root: str = "~/.cache/switchnorm/data"  # dataset folder / cache
    download: bool = False           # let torchvision download fashion-mnist / cifar10 when missing
    train_subset: Optional[int] = 12000  # train on this many images (seeded random subset; none: all)
    val_size: int = 2000             # images held out of the training set for validation
    test_subset: Optional[int] = None  # evaluate on this many test images (none: all)
    augment: bool = True             # random crops and flips for training
    image_size: int = 224            # imagefolder: crop size
    model: str = "resnet"            # resnet (CIFAR-style ResNet-(6n+2)) or resnet50 (torchvision)
    depth: int = 14                  # resnet depth, 6n+2
    width: int = 16                  # resnet channels of the first stage
    base_lr: float = 0.1             # learning rate at ref_batch images per step
    ref_batch: int = 256             # lr = base_lr * G*S / ref_batch (linear scaling)
    momentum: float = 0.9            # SGD momentum
    weight_decay: float = 1e-4       # on every parameter except SN's importance logits
    schedule: str = "cosine"         # cosine (per step, to 0) or step (x0.1 at lr_milestones)
    lr_milestones: Tuple[float, ...] = (0.3, 0.6, 0.9)  # step schedule: fractions of training
    warmup_epochs: float = 0.0       # linear warm-up from 0 over this many epochs
    eval_stats: str = "batch_average"  # SN's BN statistics for evaluation: batch_average, moving_average
    update_stats_batches: int = 20   # training batches averaged by batch_average
    eval_batch_size: int = 256       # batch size for validation and test

    @property
    def batch_size(self) -> int:
        """Images per optimizer step, G*S."""
        g, s = parse_batch(self.batch)
        return g * s

    @property
    def num_devices(self) -> int:
        """G, the number of virtual devices of the batch setting."""
        return parse_batch(self.batch)[0]

    @property
    def lr(self) -> float:
        """The scaled learning rate, base_lr * G*S / ref_batch."""
        return self.base_lr * self.batch_size / self.ref_batch

    def validate(self) -> None:
        super().validate()
        parse_batch(self.batch)
        sn.make_norm(self.norm, 8)  # unknown norm -> ValueError listing the known ones
        for key, value, known in (("dataset", self.dataset, DATASETS), ("model", self.model, MODELS),
                                  ("schedule", self.schedule, SCHEDULES), ("eval_stats", self.eval_stats, EVAL_STATS)):
            if value not in known:
                raise ValueError(f"unknown {key} {value!r}; known: {', '.join(known)}")
        for key in ("ref_batch", "update_stats_batches", "eval_batch_size", "val_size", "image_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("train_subset", "test_subset"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 or none, got {getattr(self, key)!r}")
        if self.base_lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("base_lr must be > 0 and momentum, weight_decay, warmup_epochs >= 0")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones!r}")


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones) -> float:
    """The learning-rate multiplier at optimizer step ``step`` of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in milestones)


class ClassifyModule(pl.LightningModule):
    """The network, its SGD optimizer and schedule, and SN's batch-average evaluation."""

    def __init__(self, cfg: ClassifyConfig, num_classes: int, in_channels: int, devices: Optional[int] = None,
                 stats_loader=None) -> None:
        super().__init__()
        self.cfg = cfg
        devices = cfg.num_devices if devices is None else devices  # virtual devices in this process
        self.net = build_model(cfg.model, cfg.norm, devices, num_classes, in_channels, cfg.depth, cfg.width)
        self.stats_loader = stats_loader  # training batches for sn.update_stats
        self._t_last = None

    def forward(self, x):
        return self.net(x)

    def _step(self, batch):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, acc, x.shape[0]

    def training_step(self, batch, batch_idx):
        loss, acc, n = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", acc, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/throughput", n / max(now - self._t_last, 1e-9), batch_size=n)
        self._t_last = now
        return loss

    def on_train_epoch_start(self) -> None:
        self._t_last = None  # do not count validation time as training time

    def validation_step(self, batch, batch_idx):
        loss, acc, n = self._step(batch)
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, batch_size=n, sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss, acc, n = self._step(batch)
        self.log("test/loss", loss, batch_size=n, sync_dist=True)
        self.log("test/acc", acc, batch_size=n, sync_dist=True)

    def batch_average(self) -> None:
        """Recompute SN's BN-branch statistics by the paper's batch average (when configured)."""
        if self.cfg.eval_stats != "batch_average" or self.stats_loader is None:
            return
        if not any("bn" in layer.stats for _, layer in sn.switch_norm_layers(self.net)):
            return  # no SN layer with a BN branch (e.g. the BN baseline, or sn-inln)
        n = min(self.cfg.update_stats_batches, len(self.stats_loader))
        sn.update_stats(self.net, self.stats_loader, n, forward=lambda m, b: m(b[0].to(self.device)))

    def on_validation_epoch_start(self) -> None:
        self.batch_average()

    def on_test_epoch_start(self) -> None:
        self.batch_average()

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.SGD(sn.param_groups(self.net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(cfg.warmup_epochs * total / cfg.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, warmup, cfg.schedule, cfg.lr_milestones))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _final_metrics(rundir, test_results) -> dict:
    """test_acc, test_loss (this run's test) and best/last val_acc, last train loss (metrics.csv)."""
    rows = rundir.metrics.rows()
    val = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "val" and r["name"] == "acc"]
    train = [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == "train" and r["name"] == "loss"]
    final = {"test_acc": float(test_results["test/acc"]), "test_loss": float(test_results["test/loss"])}
    if val:
        final["best_val_acc"] = max(v for _, v in val)
        final["val_acc"] = max(val)[1]
    if train:
        final["train_loss"] = max(train)[1]
    return final


def train(cfg: ClassifyConfig, rundir, ckpt_path: Optional[str] = None) -> dict:
    """Train and test one run in ``rundir`` (resuming from ``ckpt_path``); return final metrics."""
    trainer = build_trainer(cfg, rundir, monitor="val/acc", mode="max")
    # with P processes (DDP), each holds G/P of the G virtual devices: G*S/P images per step
    batch_size, devices = batch_layout(cfg.batch, trainer.world_size)
    data = build_datasets(cfg)
    train_loader, val_loader, test_loader = make_loaders(cfg, data, batch_size)
    module = ClassifyModule(cfg, data.num_classes, data.in_channels, devices, stats_loader=train_loader)
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
    (results,) = trainer.test(module, test_loader, verbose=False)
    final = _final_metrics(rundir, results)
    final["steps"] = trainer.global_step
    if trainer.is_global_zero:
        print(f"test accuracy {final['test_acc']:.4f} (best val {final.get('best_val_acc', float('nan')):.4f}) "
              f"-- run directory: {rundir.path}", flush=True)
    return final


TASK = Task("classify", ClassifyConfig, train, report_keys=("test_acc", "best_val_acc"))

if __name__ == "__main__":
    sys.exit(main(TASK))
