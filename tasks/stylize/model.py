"""Johnson et al.'s image transformation network (Johnson, Alahi, Fei-Fei 2016), any normalizer.

The paper's Sec. 4.3 trains this network with BN, IN or SN in every normalization layer:
:class:`TransformerNet` has a 9x9 stem, two stride-2 convolutions, five residual blocks, two
nearest-upsample convolutions and a 9x9 output convolution, reflection padding throughout and
a normalizer from :func:`sn.make_norm` after every convolution but the last. The perceptual
losses it is trained against are in :mod:`tasks.stylize.perceptual`.

Images are float tensors in [0, 1], shape ``(N, 3, H, W)``.
"""
from __future__ import annotations

from typing import Optional

import sn
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the transformation network halves the resolution twice and doubles it twice
SIZE_MULTIPLE = 4
MIN_SIZE = 16


# ----------------------------------------------------------------------------------------
# Transformation network
# ----------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Optional nearest x2 upsampling, reflection padding, a convolution, a norm, a ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, *, upsample: bool = False,
                 norm: Optional[str] = "in", devices: int = 1, relu: bool = True):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride)
        self.norm = sn.make_norm(norm, c_out, devices=devices) if norm is not None else nn.Identity()
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.act(self.norm(self.conv(self.pad(x))))


class ResidualBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm plus the identity (Johnson et al.'s residual block)."""

    def __init__(self, channels: int, norm: str, devices: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, norm=norm, devices=devices)
        self.conv2 = ConvLayer(channels, channels, 3, norm=norm, devices=devices, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network with a chosen normalizer.

    Args:
        norm: a name of :func:`sn.norm_names` used after every convolution but the last.
            Default: ``"in"``
        devices: per-device chunks of the batch statistics (``bn`` and SN's BN branch): the
            G of a GxS batch setting. Default: 1
        width: channels of the stem; the network uses width, 2*width and 4*width. Default: 32
            (Johnson et al.)
        num_res_blocks: residual blocks at the lowest resolution. Default: 5

    Shape:
        ``(N, 3, H, W) -> (N, 3, H, W)`` with H and W multiples of 4; :meth:`stylize` takes any
        size of at least 16x16. The output is linear (no squashing), meant to lie in [0, 1].
    """

    def __init__(self, norm: str = "in", devices: int = 1, width: int = 32, num_res_blocks: int = 5):
        super().__init__()
        for name, value in (("width", width), ("num_res_blocks", num_res_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        c1, c2, c3 = width, 2 * width, 4 * width
        kw = dict(norm=norm, devices=devices)
        self.down = nn.Sequential(
            ConvLayer(3, c1, 9, **kw), ConvLayer(c1, c2, 3, 2, **kw), ConvLayer(c2, c3, 3, 2, **kw)
        )
        self.res = nn.Sequential(*[ResidualBlock(c3, norm, devices) for _ in range(num_res_blocks)])
        self.up = nn.Sequential(
            ConvLayer(c3, c2, 3, upsample=True, **kw), ConvLayer(c2, c1, 3, upsample=True, **kw),
            ConvLayer(c1, 3, 9, norm=None, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, "input")
        h, w = x.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"TransformerNet.forward needs height and width divisible by {SIZE_MULTIPLE}, "
                f"got {h}x{w}; use stylize() for other sizes"
            )
        return self.up(self.res(self.down(x)))

    @torch.no_grad()
    def stylize(self, x: Tensor) -> Tensor:
        """Apply the network to images of any size >= 16x16 (reflection-padded to a multiple of 4
        and cropped back), in the current train/eval mode; returns the output clamped to [0, 1]."""
        check_images(x, "image")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % SIZE_MULTIPLE, -w % SIZE_MULTIPLE
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        return self(padded)[..., :h, :w].clamp(0, 1)


def check_images(x: Tensor, what: str) -> None:
    """Raise ValueError unless ``x`` is an ``(N, 3, H, W)`` batch with H, W >= MIN_SIZE."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"{what} must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {x.shape[-2]}x{x.shape[-1]}")
