"""The detection LightningModule: the detector, SGD with warm-up and steps, COCO evaluation.

Training minimises the sum of torchvision's losses (RPN objectness and box regression, the
box head's classification and regression, the mask loss), logged each as ``train/<loss>``
with their sum as ``train/loss``. The optimizer is SGD with momentum; the learning rate
``base_lr * G*S / ref_batch`` warms up linearly from ``warmup_factor`` of it over
``warmup_steps`` and drops x0.1 at each of ``lr_milestones`` (fractions of training), as in
Detectron. Weight decay applies to every parameter but the norm layers' gammas and betas
(``norm_weight_decay``, the paper: 0) and SN's importance logits (``logit_weight_decay``).

Evaluation runs the detector on the evaluation set and scores it with COCO's own metric
(:mod:`tasks.detect.evaluate`): ``val/box_ap``, ``val/box_ap50``, ``val/box_ap75``,
``val/mask_ap``, ... With ``eval_stats: batch_average`` the BN statistics of SN layers with
a BN branch are first recomputed by the paper's batch average (``sn.update_stats``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pytorch_lightning as pl
import sn
import torch
from torch import nn

from ..common.mixins import Throughput
from .config import DetectConfig
from .evaluate import coco_metrics, draw_prediction, to_coco_results
from .model import build_detector


def lr_factor(step: int, total: int, warmup: int, warmup_factor: float, milestones) -> float:
    """The learning-rate multiplier at optimizer step ``step`` of ``total``: Detectron's linear
    warm-up from ``warmup_factor`` over ``warmup`` steps, then x0.1 at each milestone fraction."""
    factor = 0.1 ** sum(step >= m * total for m in milestones)
    if warmup and step < warmup:
        factor *= warmup_factor + (1 - warmup_factor) * step / warmup
    return factor


def norm_parameters(net: nn.Module) -> set:
    """ids of the gammas and betas of every norm layer (BN, GN, IN, LN, SN; not SN's logits)."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, sn.SwitchNorm)
    return {id(p) for m in net.modules() if isinstance(m, norms)
            for name, p in m.named_parameters(recurse=False) if name in ("weight", "bias")}


def optimizer_groups(net: nn.Module, cfg: DetectConfig) -> List[Dict]:
    """SGD groups: the rest at ``weight_decay``; norm gammas/betas at ``norm_weight_decay``; SN's
    logits at ``lr * logit_lr_scale`` with ``logit_weight_decay``. Frozen parameters are left out."""
    logits = {id(p) for _, m in sn.switch_norm_layers(net) for p in (m.mean_weight, m.var_weight)}
    affine = norm_parameters(net)
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in logits | affine], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if id(p) in affine], "weight_decay": cfg.norm_weight_decay},
              {"params": [p for p in trainable if id(p) in logits], "weight_decay": cfg.logit_weight_decay,
               "lr": cfg.lr * cfg.logit_lr_scale}]
    return [g for g in groups if g["params"]]


class DetectModule(Throughput, pl.LightningModule):
    """The detector, its optimizer and schedule, and COCO evaluation of the evaluation set.

    Args:
        cfg: the run's config.
        num_classes: classes with background.
        label_to_category: the COCO category id of each label (for the results).
        names: a class name per label (for the drawings).
        devices: virtual devices in this process (default: G of the batch setting).
    """

    def __init__(self, cfg: DetectConfig, num_classes: int, label_to_category: Dict[int, int],
                 names: Optional[Dict[int, str]] = None, devices: Optional[int] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = build_detector(cfg, num_classes, devices)
        self.label_to_category = dict(label_to_category)
        self.names = dict(names or {})
        self._results: Dict[int, tuple] = {}
        self._gt = None

    def forward(self, images, targets=None):
        return self.net(images, targets)

    # --- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.trainer.global_step} "
                                     f"({', '.join(f'{k} {v.item():.4g}' for k, v in losses.items())})")
        n = len(images)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self.log_throughput(n)
        return loss

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.SGD(optimizer_groups(self.net, cfg), lr=cfg.lr, momentum=cfg.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, cfg.warmup_steps, cfg.warmup_factor, cfg.lr_milestones))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation -------------------------------------------------------------------------
    def batch_average(self) -> None:
        """The paper's batch average of the BN-branch statistics, when configured and present."""
        data = self.trainer.datamodule
        if self.cfg.eval_stats != "batch_average" or data is None:
            return
        if not any("bn" in layer.stats for _, layer in sn.switch_norm_layers(self.net)):
            return  # no SN layer with a BN branch
        loader = data.stats_loader()
        n = min(self.cfg.update_stats_batches, len(loader))
        sn.update_stats(self.net, loader, n, forward=lambda m, b: m([img.to(self.device) for img in b[0]]))

    def on_validation_epoch_start(self) -> None:
        self.batch_average()
        self._results = {}

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        for output, target in zip(self.net(images), targets):
            self._results[int(target["image_id"])] = to_coco_results(output, target["image_id"],
                                                                     self.label_to_category)

    def gathered_results(self) -> Dict[int, tuple]:
        """Every process's results by image id (an image evaluated twice counts once)."""
        if self.trainer.world_size == 1:
            return self._results
        import torch.distributed as dist

        parts = [None] * self.trainer.world_size
        dist.all_gather_object(parts, self._results)
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    def on_validation_epoch_end(self) -> None:
        data = self.trainer.datamodule
        if self._gt is None:
            self._gt = data.val_set.coco_gt()
        results = self.gathered_results()
        image_ids = data.val_set.image_ids
        missing = sorted(set(image_ids) - set(results))
        if missing:  # an AP over part of the set would pass for the whole set's
            raise RuntimeError(f"the evaluation saw {len(image_ids) - len(missing)} of the {len(image_ids)} "
                               f"validation images (missing ids {missing[:5]}...) over {self.trainer.world_size} "
                               "process(es); refusing to report COCO AP for part of the set")
        boxes = [r for b, _ in results.values() for r in b]
        masks = [r for _, m in results.values() for r in m] if self.cfg.arch == "maskrcnn" else None
        for name, value in coco_metrics(self._gt, boxes, masks, image_ids).items():
            self.log(f"val/{name}", value, prog_bar=name in ("box_ap", "mask_ap"))

    @torch.no_grad()
    def save_predictions(self, items, folder: Path, score_threshold: float = 0.5) -> List[Path]:
        """Draw ``(image, target)`` items beside the detector's predictions into ``folder``."""
        if not items or not self.trainer.is_global_zero:
            return []
        was_training = self.net.training
        self.net.eval()
        try:
            outputs = self.net([image.to(self.device) for image, _ in items])
        finally:
            self.net.train(was_training)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for (image, target), output in zip(items, outputs):
            output = {k: v.cpu() for k, v in output.items()}
            path = folder / f"val_{int(target['image_id']):06d}.png"
            draw_prediction(image, target, output, self.names, score_threshold).save(path)
            paths.append(path)
        return paths
