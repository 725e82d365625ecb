"""The ENAS child: one shared-weight CNN holding every candidate operation of every layer.

Pham et al. (2018), macro search space, scaled to Fashion-MNIST on a CPU. A stem convolution
(stride 2 by default) is followed by ``num_layers`` layers; layer ``k`` applies the operation
the architecture picks (out of :data:`tasks.enas.controller.OPS`) to the output of layer
``k - 1``, adds the outputs
of the earlier layers it has skip connections from, and batch-normalizes the sum. After the
layers listed in ``reduce_after`` every stored output is average-pooled by 2, so skips keep
matching shapes. Global average pooling and a linear layer classify.

Every candidate op owns its weights, shared by all architectures that pick it. The child's BN
always normalizes with batch statistics (``track_running_stats=False``): running averages
would mix the statistics of every architecture sampled, matching none of them.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .controller import OPS, check_arch


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _conv_bn_relu(c_in: int, c_out: int, k: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), _bn(c_out), nn.ReLU())


class ConvOp(nn.Module):
    """ENAS conv branch: 1x1 conv-BN-ReLU, then a ``k x k`` (separable) conv-BN-ReLU."""

    def __init__(self, channels: int, kernel: int, separable: bool) -> None:
        super().__init__()
        self.pre = _conv_bn_relu(channels, channels, 1)
        if separable:  # depthwise k x k, then pointwise 1x1
            self.conv = nn.Sequential(
                nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False),
                _conv_bn_relu(channels, channels, 1),
            )
        else:
            self.conv = _conv_bn_relu(channels, channels, kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pre(x))


class PoolOp(nn.Module):
    """ENAS pool branch: 1x1 conv-BN-ReLU, then 3x3 average or max pooling (stride 1)."""

    def __init__(self, channels: int, kind: str) -> None:
        super().__init__()
        self.pre = _conv_bn_relu(channels, channels, 1)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False) if kind == "avg" else nn.MaxPool2d(3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.pre(x))


def make_op(name: str, channels: int) -> nn.Module:
    """The candidate operation ``name`` (one of ``OPS``) on ``channels`` channels."""
    builders = {
        "conv3x3": lambda: ConvOp(channels, 3, separable=False),
        "conv5x5": lambda: ConvOp(channels, 5, separable=False),
        "sepconv3x3": lambda: ConvOp(channels, 3, separable=True),
        "sepconv5x5": lambda: ConvOp(channels, 5, separable=True),
        "avgpool3x3": lambda: PoolOp(channels, "avg"),
        "maxpool3x3": lambda: PoolOp(channels, "max"),
    }
    if name not in builders:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(builders)}")
    return builders[name]()


class ChildLayer(nn.Module):
    """All candidate ops of one layer, and the BN applied after the skip sum."""

    def __init__(self, channels: int, ops: Sequence[str] = OPS) -> None:
        super().__init__()
        self.ops = nn.ModuleDict({name: make_op(name, channels) for name in ops})
        self.bn = _bn(channels)

    def forward(self, x: Tensor, op: str, skip_inputs: Sequence[Tensor]) -> Tensor:
        out = self.ops[op](x)
        for s in skip_inputs:
            out = out + s
        return self.bn(out)


class ChildNet(nn.Module):
    """The shared-weight child network.

    Args:
        num_layers: searched layers. Default: 6
        channels: channels of every layer. Default: 16
        in_channels: image channels. Default: 1 (Fashion-MNIST)
        num_classes: Default: 10
        reduce_after: layer indices after which the resolution is halved. Default: the layers
            ``L//3 - 1`` and ``2L//3 - 1`` (two reductions, as ENAS's two pooling layers)
        dropout: before the classifier. Default: 0.1
        stem_stride: stride of the stem convolution; 2 halves the resolution before the
            searched layers (28x28 Fashion-MNIST -> 14x14), which makes a CPU search 4x
            cheaper. Default: 2

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`; output: logits :math:`(N, \\text{num\\_classes})`
    """

    def __init__(self, num_layers: int = 6, channels: int = 16, in_channels: int = 1, num_classes: int = 10,
                 reduce_after: Optional[Sequence[int]] = None, dropout: float = 0.1, stem_stride: int = 2,
                 ops: Sequence[str] = OPS) -> None:
        super().__init__()
        for name, value in (("num_layers", num_layers), ("channels", channels), ("stem_stride", stem_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if reduce_after is None:
            thirds = (num_layers // 3 - 1, 2 * num_layers // 3 - 1)
            reduce_after = sorted({k for k in thirds if 0 <= k < num_layers - 1})
        bad = [k for k in reduce_after if not (isinstance(k, int) and 0 <= k < num_layers)]
        if bad:
            raise ValueError(f"reduce_after={list(reduce_after)!r}: indices must be layers 0..{num_layers - 1}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_layers, self.ops, self.reduce_after = num_layers, tuple(ops), tuple(reduce_after)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, stride=stem_stride, padding=1, bias=False),
                                  _bn(channels))
        self.layers = nn.ModuleList(ChildLayer(channels, ops) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor, arch: Dict) -> Tensor:
        check_arch(arch, self.num_layers, self.ops)
        x = self.stem(x)
        outputs = []  # output of every layer so far, at the current resolution
        for k, layer in enumerate(self.layers):
            skips = [outputs[j] for j, s in enumerate(arch["skips"][k]) if s]
            x = layer(x, arch["ops"][k], skips)
            outputs.append(x)
            if k in self.reduce_after:
                outputs = [F.avg_pool2d(o, 2) for o in outputs]
                x = outputs[-1]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, C)
        return self.classifier(self.dropout(x))


@torch.no_grad()
def accuracy(child: ChildNet, arch: Dict, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` the child with architecture ``arch`` classifies right (eval mode)."""
    was_training = child.training
    child.eval()
    try:
        return (child(images, arch).argmax(1) == labels).float().mean().item()
    finally:
        child.train(was_training)
