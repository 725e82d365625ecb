"""The detection task's config: every key with its default, help text and bounds."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import sn

from ..common.config import RunConfig, ScaledBatch, count, key, parse_batch

ARCHS = ("maskrcnn", "fasterrcnn")
BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50")
DATASETS = ("synthetic", "coco")
EVAL_STATS = ("moving_average", "batch_average")
FROZEN_BN = "bn-frozen"  # torchvision's FrozenBatchNorm2d: the paper's BN-dagger, a constant affine map
AUTO = "auto"


def check_norm(name: str, what: str = "norm") -> None:
    """ValueError naming ``name`` unless it is ``bn-frozen`` or a name of ``sn.make_norm``."""
    if name == FROZEN_BN:
        return
    try:
        sn.make_norm(name, 8)
    except ValueError:
        raise ValueError(f"unknown {what} {name!r}; known: {FROZEN_BN}, {', '.join(sn.norm_names())}") from None


@dataclasses.dataclass
class DetectConfig(ScaledBatch, RunConfig):
    """The detection task's config (keys of RunConfig plus these)."""

    task: str = key("detect", "the task", group="run")
    run: str = key("{norm}_{batch}_s{seed}", "run name template over config keys", group="run")
    norm: str = key("sn", f"the backbone's norm: {FROZEN_BN} (the paper's BN-dagger), bn, gn, sn, sn-inln, ...")
    head_norm: str = key(AUTO, f"the norm of FPN, box head and mask head (none: no norm; auto: as norm, "
                               f"but none for {FROZEN_BN})")
    rpn_norm: bool = key(False, "also normalize the RPN head's convolutions with head_norm (the paper does not)")
    batch: str = key("2x2", "GxS: G devices x S images per device (the paper: 8x2)")
    epochs: int = count(2, "training epochs")
    arch: str = key("maskrcnn", "Mask R-CNN or Faster R-CNN, both with FPN", choices=ARCHS)
    backbone: str = key("resnet10", "torchvision ResNet body (resnet10: BasicBlocks [1, 1, 1, 1])", choices=BACKBONES)
    backbone_checkpoint: Optional[str] = key(None, "initialise the backbone from a classification checkpoint "
                                                   "(a run's .ckpt or a state-dict file of the same ResNet)")
    trainable_layers: int = key(5, "backbone stages trained (0-5, from the top; Detectron: 3 with a pretrained "
                                   "backbone, i.e. stem and layer1 frozen)", min=0, lt=6)
    fpn_channels: int = count(64, "FPN channels (the paper: 256)")
    head_channels: int = count(64, "channels of the box head's and the mask head's convolutions (the paper: 256)")
    box_convs: int = key(4, "convolutions of the box head before its FC layer (the paper: 4conv1fc)", min=0)
    box_fc: int = count(256, "the box head's FC features (the paper: 1024)")
    mask_convs: int = count(4, "convolutions of the mask head (the paper: 4)")
    anchor_sizes: Tuple[int, ...] = key((8, 16, 32, 64, 128), "anchor size per FPN level P2-P6 (the paper: "
                                                               "32,64,128,256,512)")
    min_size: int = count(64, "images are resized to this shorter side (the paper: 800)")
    max_size: int = count(64, "... and at most this longer side (the paper: 1333)")
    rpn_post_nms_train: int = count(300, "RPN proposals per image in training (the paper: 2000)")
    rpn_post_nms_test: int = count(100, "RPN proposals per image in evaluation (the paper: 1000)")
    rois_per_image: int = count(64, "sampled RoIs per image for the box head in training (the paper: 512)")
    detections_per_image: int = count(50, "detections kept per image in evaluation (COCO: 100)")
    dataset: str = key("synthetic", "synthetic shapes with exact masks, or a COCO-format folder", choices=DATASETS)
    data_root: str = key("~/data/coco", "coco: the folder holding <split>/ images and "
                                        "annotations/instances_<split>.json")
    train_split: str = key("train2017", "coco: the training split")
    val_split: str = key("val2017", "coco: the evaluation split")
    train_images: Optional[int] = count(1024, "training images (synthetic: generated; coco: a seeded subset, "
                                              "none: all)")
    val_images: Optional[int] = count(128, "evaluation images (synthetic: generated; coco: a seeded subset, none: all)")
    image_size: int = count(64, "synthetic: side of the square images")
    max_objects: int = count(3, "synthetic: at most this many shapes per image")
    flip: bool = key(True, "random horizontal flips for training")
    base_lr: float = key(0.02, "learning rate at ref_batch images per step (the paper: 0.02 at 16)", gt=0)
    ref_batch: int = count(16, "lr = base_lr * G*S / ref_batch (linear scaling)")
    momentum: float = key(0.9, "SGD momentum", min=0)
    weight_decay: float = key(1e-4, "on every parameter but the norms' gammas/betas and SN's logits", min=0)
    norm_weight_decay: float = key(0.0, "on the norm layers' gammas and betas (the paper: 0)", min=0)
    logit_lr_scale: float = key(10.0, "SN's importance logits learn at lr * this (the paper: 1, one learning rate)",
                                gt=0)
    logit_weight_decay: float = key(0.0, "weight decay on SN's importance logits", min=0)
    lr_milestones: Tuple[float, ...] = key((0.667, 0.889), "x0.1 at these fractions of training (Detectron's "
                                                           "1x and 2x: 60k/80k of 90k)")
    warmup_steps: int = key(100, "linear warm-up over this many steps (Detectron: 500)", min=0)
    warmup_factor: float = key(1 / 3, "the warm-up starts at lr * this, in (0, 1] (Detectron: 1/3)", gt=0)
    grad_clip: Optional[float] = key(None, "clip the gradient norm at this value (none: no clipping)", gt=0)
    eval_stats: str = key("moving_average", "SN's and BN's statistics for evaluation (batch_average: the "
                                            "paper's batch average over update_stats_batches training batches)",
                          choices=EVAL_STATS)
    update_stats_batches: int = count(10, "training batches averaged by batch_average")
    val_every_n_epochs: int = key(0, "evaluate every N epochs (0: only at the end)", min=0)
    eval_batch_size: int = count(8, "images per evaluation batch")
    predictions: int = key(4, "validation images drawn with their predicted boxes and masks at the end", min=0)
    log_every_n_steps: int = count(5, "training metrics rows every N optimizer steps", group="logging")
    weights_every_n_steps: int = count(50, "importance-weight rows every N optimizer steps (and at the end)",
                                       group="logging")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_norm == AUTO:  # resolved now, so config.yaml records the heads' norm
            self.head_norm = "none" if self.norm == FROZEN_BN else self.norm

    def validate(self) -> None:
        super().validate()
        parse_batch(self.batch)
        check_norm(self.norm)
        if self.head_norm == FROZEN_BN:
            raise ValueError(f"head_norm {FROZEN_BN!r} would freeze randomly initialised layers into the identity; "
                             "use none for heads without normalization")
        check_norm(self.head_norm, "head_norm")
        if len(self.anchor_sizes) != 5 or any(a < 1 for a in self.anchor_sizes):
            raise ValueError(f"anchor_sizes needs 5 positive sizes, one per FPN level P2-P6, got {self.anchor_sizes!r}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1), got {self.lr_milestones!r}")
        if self.warmup_factor > 1:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor!r}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        if self.dataset == "synthetic" and self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 for synthetic shapes, got {self.image_size}")
        if self.dataset == "synthetic" and (self.train_images is None or self.val_images is None):
            raise ValueError("synthetic data needs a number of train_images and val_images (none means all, "
                             "which only a COCO folder has)")
