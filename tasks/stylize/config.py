"""The style-transfer task's config: every key with its default, help text and bounds."""
from __future__ import annotations

import dataclasses
from typing import Optional

import sn

from ..common.config import RunConfig, count, key, parse_batch
from .images import load_style
from .model import MIN_SIZE, SIZE_MULTIPLE
from .perceptual import MULTISCALE_SIZES, NET_DEFAULTS, PERCEPTUAL_NETS, content_layers, find_vgg_weights


@dataclasses.dataclass
class StylizeConfig(RunConfig):
    """The style-transfer task's config (keys of RunConfig plus these)."""

    task: str = key("stylize", "the task", group="run")
    norm: str = key("sn", "in, bn, sn, ... (sn.norm_names()) after every conv but the last")
    batch: str = key("1x4", "GxS: G devices x S crops per device (the paper: 1x4)")
    epochs: int = count(5, "training epochs of steps_per_epoch steps (checkpoint/resume unit)")
    steps_per_epoch: int = count(150, "optimizer steps per epoch (the paper: 40,000 steps in all)")
    image_size: int = key(64, f"side of the square content crops, a multiple of {SIZE_MULTIPLE} >= {MIN_SIZE} "
                              "(the paper: 256)")
    content_dir: Optional[str] = key(None, "folder of content images (COCO in the paper); none: bundled photos")
    style: str = key("ihc", "style image: a bundled name (ihc, hubble, retina, brick, grass, gravel) or a path")
    style_size: Optional[int] = key(None, "shorter side of the style image (none: image_size)", min=MIN_SIZE)
    width: int = count(32, "channels of the network's stem (Johnson et al.: 32)")
    res_blocks: int = count(5, "residual blocks (Johnson et al.: 5)")
    lr: float = key(1e-3, "Adam learning rate (no weight decay, as in the paper)", gt=0)
    logit_lr_scale: float = key(1.0, "SN's importance logits learn at lr * this (the paper: 1, one learning rate)",
                                gt=0)
    content_layer: Optional[str] = key(None, "layer(s) of the content loss, comma-separated: VGG16 relu2_2, "
                                             "relu3_3, ...; random-multiscale k1, k3, ..., k23 (none: the network's "
                                             "default, relu2_2 / k3,k5)")
    content_weight: Optional[float] = key(None, "weight of the content loss (none: the network's default, "
                                                "1e5 / 1 / 1 for vgg16-imagenet / vgg16-random-init / "
                                                "random-multiscale)", min=0)
    style_weight: Optional[float] = key(None, "weight of the style loss, Gram errors summed over the style layers "
                                              "(none: the network's default, 1e10 / 1e5 / 3)", min=0)
    tv_weight: float = key(0.0, "weight of the total-variation loss", min=0)
    perceptual_net: str = key("auto", "auto: VGG16 with ImageNet weights if on disk, else random-multiscale "
                                      "(random filters, 1x1 to 23x23); vgg16-random-init: VGG16 untrained",
                              choices=("auto",) + PERCEPTUAL_NETS)
    vgg_weights: Optional[str] = key(None, "torchvision VGG16 state-dict file (else the torch hub cache)")
    vgg_seed: int = key(0, "seed of the random perceptual networks (random-multiscale, vgg16-random-init)")
    log_every_n_steps: int = count(1, "loss rows every N optimizer steps", group="logging")
    weights_every_n_steps: int = count(25, "importance-weight rows every N optimizer steps (and at the end)",
                                       group="logging")
    sample_every_n_steps: int = key(150, "sample grid every N optimizer steps (and at the end); 0: only at the end",
                                    min=0, group="logging")
    sample_size: int = key(128, f"side of the sample grid's images, a multiple of {SIZE_MULTIPLE} >= {MIN_SIZE}",
                           group="logging")
    eval_crops: int = count(16, "held-out crops for the final losses")

    def __post_init__(self) -> None:
        super().__post_init__()
        # resolve "auto" now, so config.yaml records the perceptual network actually used
        if self.perceptual_net == "auto":
            found = find_vgg_weights(self.vgg_weights)
            self.perceptual_net = "vgg16-imagenet" if found is not None else "random-multiscale"
        # and the network's default layers and weights, so config.yaml records those used
        defaults = NET_DEFAULTS.get(self.perceptual_net, {})
        for name in ("content_layer", "content_weight", "style_weight"):
            if getattr(self, name) is None and name in defaults:
                setattr(self, name, defaults[name])

    def validate(self) -> None:
        super().validate()
        parse_batch(self.batch)
        sn.make_norm(self.norm, 8)  # unknown norm -> ValueError listing the known ones
        for name in ("image_size", "sample_size"):
            value = getattr(self, name)
            if value < MIN_SIZE or value % SIZE_MULTIPLE:
                raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} and >= {MIN_SIZE}, got {value!r}")
        load_style(self.style, None)  # missing / unreadable -> ValueError naming it
        content_layers(self.content_layer, self.perceptual_net)  # not a layer of that network -> ValueError
        if self.perceptual_net == "random-multiscale":
            for name in ("image_size", "style_size"):
                value = getattr(self, name)
                if value is not None and value < max(MULTISCALE_SIZES):
                    raise ValueError(f"{name} must be >= {max(MULTISCALE_SIZES)} with perceptual_net "
                                     f"random-multiscale (its largest filter), got {value!r}")
        # content_dir and the VGG16 weights are checked when a run starts (StylizeModule), so
        # that experiments for other machines still resolve (--dry-run) here
