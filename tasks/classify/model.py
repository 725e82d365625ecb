"""Classification networks whose every normalization layer comes from ``sn.make_norm``.

- :class:`CifarResNet`: the ResNet of He et al. (2016) for 32x32 images (Sec. 4.2 there):
  a 3x3 stem, three stages of ``n`` basic blocks with ``width``, ``2 width``, ``4 width``
  channels, depth ``6n + 2`` (20, 32, 44, 56, 110, ...), global average pooling, one linear
  layer. Small enough for a CPU; works for 28x28 inputs as well.
- ``resnet50``: torchvision's ResNet-50 with ``norm_layer`` from the registry, the paper's
  ImageNet backbone.

Initialisation as in the paper: convolutions by He et al.'s method (fan-out), every norm's
gamma 1 and beta 0, SN's importance logits 1 (the layers' own defaults).
"""
from __future__ import annotations

from typing import Callable

import sn
from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]
MODELS = ("resnet", "resnet50")


def norm_factory(norm: str, devices: int = 1) -> NormFactory:
    """``channels -> norm layer`` for the registry name ``norm`` with ``devices`` BN chunks."""
    sn.make_norm(norm, 4, devices=devices)  # fail early, with the registry's message, on a bad name
    return lambda channels: sn.make_norm(norm, channels, dim=2, devices=devices)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norms, plus a shortcut (1x1 conv + norm when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images, with a pluggable normalization layer.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        num_classes: output classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        width: channels of the first stage (16 in He et al.).
        norm: ``channels -> nn.Module`` (see :func:`norm_factory`).

    Shape:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 norm: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width!r}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), norm(width), nn.ReLU(inplace=True))
        blocks, ch = [], width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(ch, out_ch, 2 if stage > 0 and i == 0 else 1, norm))
                ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))  # (N, C, 1, 1) -> (N, C) -> (N, classes)


def resnet50(num_classes: int, in_channels: int, norm: NormFactory) -> nn.Module:
    """torchvision's ResNet-50 (random init) with ``norm`` for every normalization layer."""
    import torchvision

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes, norm_layer=norm)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def build_model(name: str, norm: str, devices: int, num_classes: int, in_channels: int,
                depth: int = 20, width: int = 16) -> nn.Module:
    """The network ``name`` (``resnet`` or ``resnet50``) with norm ``norm`` over ``devices`` chunks.

    Raises:
        ValueError: unknown model or norm name, bad depth.
    """
    factory = norm_factory(norm, devices)
    if name == "resnet":
        return CifarResNet(depth, num_classes, in_channels, width, factory)
    if name == "resnet50":
        return resnet50(num_classes, in_channels, factory)
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
