"""The classification task's config: every key with its default, help text and bounds."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import sn

from ..common.config import RunConfig, ScaledBatch, count, key, parse_batch
from .model import MODELS

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "synthetic")
SCHEDULES = ("cosine", "step")
EVAL_STATS = ("batch_average", "moving_average")


@dataclasses.dataclass
class ClassifyConfig(ScaledBatch, RunConfig):
    """The classification task's config (keys of RunConfig plus these)."""

    task: str = key("classify", "the task", group="run")
    run: str = key("{norm}_{batch}_s{seed}", "run name template over config keys", group="run")
    norm: str = key("sn", "bn, gn, in, ln, sn, sn-inln, ... (sn.norm_names())")
    batch: str = key("8x16", "GxS: G devices x S samples per device (loader batch G*S)")
    epochs: int = count(2, "training epochs")
    dataset: str = key("fashion-mnist", "the images", choices=DATASETS)
    data_root: str = key("~/.cache/switchnorm/data", "dataset folder / cache")
    download: bool = key(False, "let torchvision download fashion-mnist / cifar10 when missing")
    train_subset: Optional[int] = count(None, "train on this many images (seeded random subset; none: all)")
    val_size: int = count(2000, "images held out of the training set for validation")
    test_subset: Optional[int] = count(None, "evaluate on this many test images (none: all)")
    augment: bool = key(False, "random crops and flips for training (pays off in long runs only)")
    image_size: int = count(224, "imagefolder: crop size")
    model: str = key("resnet", "resnet (CIFAR-style ResNet-(6n+2)) or resnet50 (torchvision)", choices=MODELS)
    depth: int = key(8, "resnet depth, 6n+2")
    width: int = key(16, "resnet channels of the first stage")
    base_lr: float = key(0.4, "learning rate at ref_batch images per step (the paper: 0.1 for 100 epochs)", gt=0)
    ref_batch: int = count(256, "lr = base_lr * G*S / ref_batch (linear scaling)")
    momentum: float = key(0.9, "SGD momentum", min=0)
    weight_decay: float = key(1e-4, "on every parameter except SN's importance logits", min=0)
    logit_lr_scale: float = key(10.0, "SN's importance logits learn at lr * this (the paper: 1, one learning rate)", gt=0)
    logit_weight_decay: float = key(0.0, "weight decay on SN's importance logits (the paper decays 'all parameters': 1e-4)", min=0)
    schedule: str = key("cosine", "cosine (per step, to 0) or step (x0.1 at lr_milestones)", choices=SCHEDULES)
    lr_milestones: Tuple[float, ...] = key((0.3, 0.6, 0.9), "step schedule: fractions of training, in (0, 1)")
    warmup_epochs: float = key(0.2, "linear warm-up from 0 over this many epochs", min=0)
    eval_stats: str = key("batch_average", "SN's BN statistics for evaluation", choices=EVAL_STATS)
    update_stats_batches: int = count(20, "training batches averaged by batch_average")
    eval_batch_size: int = count(256, "batch size for validation and test")

    def validate(self) -> None:
        super().validate()
        parse_batch(self.batch)
        sn.make_norm(self.norm, 8)  # unknown norm -> ValueError listing the known ones
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones!r}")
