"""The classification LightningModule: the network, SGD with its schedule, SN's batch average.

Evaluation of SN: ``eval_stats: batch_average`` (the paper's default) recomputes the BN-branch
statistics with ``sn.update_stats`` over ``update_stats_batches`` training batches before each
validation and the test; ``moving_average`` uses the running statistics. A network without
SN layers with a BN branch (the BN baseline, ``sn-inln``) always evaluates with its moving
averages, as in the paper.
"""
from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl
import sn
import torch
import torch.nn.functional as F

from ..common.mixins import Throughput
from .config import ClassifyConfig
from .model import build_model


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones) -> float:
    """The learning-rate multiplier at optimizer step ``step`` of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in milestones)


def optimizer_groups(net: torch.nn.Module, cfg: ClassifyConfig) -> list:
    """SGD parameter groups: every parameter at ``cfg.lr`` with ``cfg.weight_decay``, except SN's
    importance logits, at ``cfg.lr * cfg.logit_lr_scale`` with ``cfg.logit_weight_decay``
    (:func:`sn.param_groups` finds them)."""
    groups = sn.param_groups(net, cfg.weight_decay)
    for group in groups[1:]:  # the logits' group, present when the network has SN layers
        group.update(lr=cfg.lr * cfg.logit_lr_scale, weight_decay=cfg.logit_weight_decay)
    return groups


class ClassifyModule(Throughput, pl.LightningModule):
    """The network, its SGD optimizer and schedule, and SN's batch-average evaluation."""

    def __init__(self, cfg: ClassifyConfig, num_classes: int, in_channels: int, devices: Optional[int] = None) -> None:
        super().__init__()
        self.cfg = cfg
        devices = cfg.num_devices if devices is None else devices  # virtual devices in this process
        self.net = build_model(cfg.model, cfg.norm, devices, num_classes, in_channels, cfg.depth, cfg.width)

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
        self.log_throughput(n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc, n = self._step(batch)
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, batch_size=n, sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss, acc, n = self._step(batch)
        self.log("test/loss", loss, batch_size=n, sync_dist=True)
        self.log("test/acc", acc, batch_size=n, sync_dist=True)

    def batch_average(self) -> None:
        """Recompute SN's BN-branch statistics by the paper's batch average (when configured).

        The batches come from the datamodule's :meth:`~tasks.classify.data.ClassifyData.stats_loader`.
        """
        data = self.trainer.datamodule
        if self.cfg.eval_stats != "batch_average" or data is None:
            return
        if not any("bn" in layer.stats for _, layer in sn.switch_norm_layers(self.net)):
            return  # no SN layer with a BN branch (e.g. the BN baseline, or sn-inln)
        loader = data.stats_loader()
        n = min(self.cfg.update_stats_batches, len(loader))
        sn.update_stats(self.net, loader, n, forward=lambda m, b: m(b[0].to(self.device)))

    def on_validation_epoch_start(self) -> None:
        self.batch_average()

    def on_test_epoch_start(self) -> None:
        self.batch_average()

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.SGD(optimizer_groups(self.net, cfg), lr=cfg.lr, momentum=cfg.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(cfg.warmup_epochs * total / cfg.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, warmup, cfg.schedule, cfg.lr_milestones))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
