"""Mask R-CNN and Faster R-CNN with FPN, every norm layer from the registry (or frozen BN).

torchvision's detection models put together from their parts, as its ``*_fpn_v2`` builders
do, but with the normalizers under study instead of their fixed ``BatchNorm2d``:

- backbone: a torchvision ResNet body (``resnet10``: BasicBlocks ``[1, 1, 1, 1]``,
  ``resnet18/34/50``) with ``norm``; ``bn-frozen`` is torchvision's ``FrozenBatchNorm2d``
  (the detection default and the paper's BN-dagger: a constant affine map, no
  normalization). Optionally initialised from a classification checkpoint.
- FPN (``backbone.fpn``), the box head (``roi_heads.box_head``, ``box_convs`` convolutions and
  one FC layer: the paper's 4conv1fc) and the mask head (``roi_heads.mask_head``) with
  ``head_norm`` (``none``: no normalization); the RPN head (``rpn.head``) too with ``rpn_norm``.

Batch setting ``GxS``: backbone, FPN and RPN normalize ``(N, C, H, W)`` features of the
``G*S`` images with ``devices=G`` (batch statistics within each device's S images). The
heads see RoIs, a different number per image, so :class:`DeviceSplit` runs a head on each
device's RoIs separately while its norms train, as G GPUs would; their norms have
``devices=1``. Their moving averages are then updated G times a step (once per device),
which shortens their memory but estimates the same per-device statistics.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import sn
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.misc import Conv2dNormActivation

from .config import FROZEN_BN, DetectConfig

NormFactory = Callable[[int], nn.Module]
STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # the body's stages, bottom up


def norm_factory(name: str, devices: int = 1) -> Optional[NormFactory]:
    """``channels -> norm layer`` for ``name`` (a registry name or ``bn-frozen``); None for ``none``."""
    if name == FROZEN_BN:
        return FrozenBatchNorm2d
    if name == "none":
        return None
    sn.make_norm(name, 8, devices=devices)  # fail early, with the registry's message
    return lambda channels: sn.make_norm(name, channels, dim=2, devices=devices)


def resnet_body(name: str, norm: Optional[NormFactory]) -> tv_resnet.ResNet:
    """A torchvision ResNet (random init) with ``norm`` for every norm layer (None: none at all)."""
    norm = norm or (lambda channels: nn.Identity())
    if name == "resnet10":
        return tv_resnet.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm)
    builders = {"resnet18": tv_resnet.resnet18, "resnet34": tv_resnet.resnet34, "resnet50": tv_resnet.resnet50}
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; known: resnet10, {', '.join(builders)}")
    return builders[name](weights=None, norm_layer=norm)


def load_backbone(body: nn.Module, path: str) -> None:
    """Load a classification checkpoint into ``body``: a Lightning ``.ckpt`` of this suite (the
    network's keys under ``net.``) or a plain state dict of the same ResNet; ``fc`` is left out.

    Raises:
        ValueError: the file is missing or its keys do not fit the body (names the first ones).
    """
    from pathlib import Path

    file = Path(path).expanduser()
    if file.is_dir():  # a run directory: its last checkpoint
        file = file / "checkpoints" / "last.ckpt"
    if not file.exists():
        raise ValueError(f"backbone_checkpoint {path!r} not found")
    loaded = torch.load(str(file), map_location="cpu", weights_only=False)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"backbone_checkpoint {path!r} holds no state dict")
    if any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone_checkpoint {path!r} does not fit this backbone and norm: "
                         f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                         f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")


def freeze_stages(body: nn.Module, trainable: int) -> None:
    """Train only the top ``trainable`` stages (5: all; torchvision's ``trainable_layers``)."""
    train = list(STAGES[::-1][:trainable]) + (["bn1"] if trainable == 5 else [])
    for name, param in body.named_parameters():
        if all(not name.startswith(stage) for stage in train):
            param.requires_grad_(False)


class CountingRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign that remembers how many RoIs each image of its last call had."""

    def forward(self, x, boxes: List[torch.Tensor], image_shapes):
        self.counts = [len(b) for b in boxes]
        return super().forward(x, boxes, image_shapes)


class DeviceSplit(nn.Sequential):
    """A head (an ``nn.Sequential``, same children and state-dict keys) run on each device's RoIs.

    While any of its norm layers trains (batch statistics), the RoIs of the G devices' images
    (the ``counts`` of ``pool``'s last call, images in device order) go through the head
    separately, so batch statistics never mix devices. Otherwise, one pass.
    """

    def __init__(self, head: nn.Sequential, devices: int, pool: CountingRoIAlign) -> None:
        super().__init__(*head)
        self.devices = devices
        self.__dict__["pool"] = pool  # not a submodule: it is the RoI heads' own pooler

    def _norms_train(self) -> bool:
        """Whether a layer with batch statistics (BN, SN with a BN branch) is in training mode."""
        return any(m.training for m in self.modules() if isinstance(m, _BatchNorm)
                   or (isinstance(m, sn.SwitchNorm) and "bn" in m.stats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.devices == 1 or not self._norms_train():
            return super().forward(x)
        counts = self.pool.counts
        if len(counts) % self.devices or sum(counts) != x.shape[0]:
            raise ValueError(f"{len(counts)} images with {sum(counts)} RoIs cannot be split over "
                             f"{self.devices} devices (input of {x.shape[0]} RoIs)")
        per = len(counts) // self.devices
        sizes = [sum(counts[d * per:(d + 1) * per]) for d in range(self.devices)]
        outputs = [super(DeviceSplit, self).forward(chunk) for chunk in x.split(sizes) if len(chunk)]
        return torch.cat(outputs) if outputs else super().forward(x)


class NormRPNHead(RPNHead):
    """torchvision's RPNHead whose convolutions carry a norm layer."""

    def __init__(self, channels: int, num_anchors: int, norm: NormFactory, conv_depth: int = 1) -> None:
        super().__init__(channels, num_anchors, conv_depth)
        self.conv = nn.Sequential(*[Conv2dNormActivation(channels, channels, kernel_size=3, norm_layer=norm)
                                    for _ in range(conv_depth)])
        for layer in self.conv.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)


def build_detector(cfg: DetectConfig, num_classes: int, devices: Optional[int] = None) -> nn.Module:
    """Mask R-CNN (or Faster R-CNN) with FPN for ``num_classes`` classes (background included).

    ``devices``: the virtual devices of this process (default: G of ``cfg.batch``).
    """
    devices = cfg.num_devices if devices is None else devices
    body = resnet_body(cfg.backbone, norm_factory(cfg.norm, devices))
    if cfg.backbone_checkpoint:
        load_backbone(body, cfg.backbone_checkpoint)
    freeze_stages(body, cfg.trainable_layers)
    stage2 = body.inplanes // 8  # the channels of layer1's output (64 or 256)
    fpn_norm = norm_factory(cfg.head_norm, devices)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                               [stage2 * 2 ** i for i in range(4)], cfg.fpn_channels, norm_layer=fpn_norm)
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * len(cfg.anchor_sizes))
    c = cfg.fpn_channels
    num_anchors = anchors.num_anchors_per_location()[0]
    rpn_head = (NormRPNHead(c, num_anchors, fpn_norm) if cfg.rpn_norm and fpn_norm is not None
                else RPNHead(c, num_anchors))
    head_norm = norm_factory(cfg.head_norm, 1)  # heads split by device themselves (DeviceSplit)
    box_pool = CountingRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    box_head = DeviceSplit(FastRCNNConvFCHead((c, 7, 7), [cfg.head_channels] * cfg.box_convs, [cfg.box_fc],
                                              norm_layer=head_norm), devices, box_pool)
    kwargs = dict(min_size=cfg.min_size, max_size=cfg.max_size, rpn_anchor_generator=anchors, rpn_head=rpn_head,
                  rpn_pre_nms_top_n_train=cfg.rpn_post_nms_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
                  rpn_pre_nms_top_n_test=cfg.rpn_post_nms_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
                  box_roi_pool=box_pool, box_head=box_head, box_predictor=FastRCNNPredictor(cfg.box_fc, num_classes),
                  box_batch_size_per_image=cfg.rois_per_image, box_detections_per_img=cfg.detections_per_image)
    if cfg.arch == "fasterrcnn":
        return FasterRCNN(backbone, **kwargs)
    mask_pool = CountingRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    mask_head = DeviceSplit(MaskRCNNHeads(c, [cfg.head_channels] * cfg.mask_convs, 1, norm_layer=head_norm),
                            devices, mask_pool)
    return MaskRCNN(backbone, mask_roi_pool=mask_pool, mask_head=mask_head,
                    mask_predictor=MaskRCNNPredictor(cfg.head_channels, cfg.head_channels, num_classes), **kwargs)
