"""Put SN into an existing model."""
from __future__ import annotations

import collections
import re
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from .batchnorm import PerDeviceBatchNorm
from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, check_devices

_BY_CLASS = {nn.BatchNorm1d: SwitchNorm1d, nn.BatchNorm2d: SwitchNorm2d, nn.BatchNorm3d: SwitchNorm3d}
# the forwards that compute plain BatchNorm / GroupNorm: subclasses that keep them convert
_PLAIN_FORWARDS = {_BatchNorm.forward, nn.SyncBatchNorm.forward, nn.GroupNorm.forward, PerDeviceBatchNorm.forward}
# timm's norm + activation layers (matched by name: sn depends on torch only): norm, then drop, then act
_NORM_ACT = {"BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "GroupNormAct", "GroupNorm1Act"}
_FROZEN = {"FrozenBatchNorm2d", "FrozenBatchNormAct2d"}
# subclasses whose own forward computes plain GroupNorm (timm's, with an optional fused kernel)
_PLAIN_GROUP_NORMS = {"GroupNorm", "GroupNorm1"}
_NORM_NAME = re.compile(r"Norm(Act)?(\d[dD])?(Fp32)?$|Norm\d[dD](Act)?$|^EvoNorm")


class _WithActivation:
    """SN followed by the dropout and activation of the timm layer it replaced, as that layer's
    forward applied them: ``act(drop(norm(x)))``."""

    def __init__(self, *args, drop: Optional[nn.Module] = None, act: Optional[nn.Module] = None, **kw):
        super().__init__(*args, **kw)
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(input)))


class SwitchNormAct(_WithActivation, SwitchNorm):
    """:class:`SwitchNorm` then ``drop`` and ``act`` (in place of timm's ``GroupNormAct``)."""


class SwitchNormAct2d(_WithActivation, SwitchNorm2d):
    """:class:`SwitchNorm2d` then ``drop`` and ``act`` (in place of timm's ``BatchNormAct2d``)."""


def _class_names(module: nn.Module):
    return {cls.__name__ for cls in type(module).__mro__}


def _is_frozen_bn(module: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d, timm's and detectron2's, without importing them: BN
    # statistics and affine held as buffers.
    return type(module).__name__ in _FROZEN and all(
        isinstance(getattr(module, n, None), torch.Tensor) for n in ("weight", "bias", "running_mean", "running_var"))


def _norm_act(module: nn.Module) -> bool:
    return bool(_class_names(module) & _NORM_ACT) and all(
        isinstance(getattr(module, n, None), nn.Module) for n in ("drop", "act"))


def _is_convertible(module: nn.Module) -> bool:
    if isinstance(module, SwitchNorm):
        return False
    if _is_frozen_bn(module) or _norm_act(module):
        return True
    if isinstance(module, nn.GroupNorm) and type(module).__name__ in _PLAIN_GROUP_NORMS:
        return True
    return isinstance(module, (_BatchNorm, nn.GroupNorm)) and type(module).forward in _PLAIN_FORWARDS


def _looks_like_norm(module: nn.Module) -> bool:
    """A normalization layer by type or by name (timm's LayerNorm2d, EvoNorm2dB0, RmsNorm, ...)."""
    if isinstance(module, SwitchNorm):
        return False
    norms = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", nn.LayerNorm))
    if isinstance(module, norms):
        return True
    # by name, unless it is a block holding a convolution or norm (timm's ConvNormAct)
    return bool(_NORM_NAME.search(type(module).__name__)) and not any(
        isinstance(child, nn.modules.conv._ConvNd) or _looks_like_norm(child) for child in module.children())


def _switch_norm_for(module: nn.Module, stats: Optional[Sequence[str]], kw: dict) -> SwitchNorm:
    """A new SN layer in place of ``module``, with what can be kept carried over."""
    ref = module.weight if isinstance(module.weight, torch.Tensor) else next(iter(module.buffers()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    act = _norm_act(module)
    if isinstance(module, nn.GroupNorm):
        cls, c = (SwitchNormAct if act else SwitchNorm), module.num_channels
        opts = {"eps": module.eps, "affine": module.affine}
        if stats is not None and "gn" in stats:
            opts["num_groups"] = module.num_groups
    elif _is_frozen_bn(module):
        cls, c = (SwitchNormAct2d if act else SwitchNorm2d), module.weight.numel()
        opts = {"eps": getattr(module, "eps", 1e-5), "affine": True}
    else:
        cls, c = _BY_CLASS.get(type(module), SwitchNorm), module.num_features
        if act:
            cls = SwitchNormAct2d if isinstance(module, nn.BatchNorm2d) else SwitchNormAct
        opts = {"eps": module.eps, "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
        if isinstance(module, PerDeviceBatchNorm):
            opts["devices"] = module.devices
    if stats is None and cls is SwitchNorm1d:
        stats = ("ln", "bn")  # keep BN for FC features; IN coincides with LN there
    if act:
        opts.update(drop=module.drop, act=module.act)
    opts.update(kw)
    new = cls(c, stats=stats, **opts, **factory)
    with torch.no_grad():
        if new.affine and module.weight is not None:
            new.weight.copy_(module.weight.detach())
            new.bias.copy_(module.bias.detach())
        has_stats = getattr(module, "running_mean", None) is not None
        if new.track_running_stats and has_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            nbt = getattr(module, "num_batches_tracked", None)
            if nbt is not None:
                new.num_batches_tracked.copy_(nbt)
    new.train(module.training)
    return new


def _convert(module: nn.Module, stats, kw, left: collections.Counter) -> nn.Module:
    if _is_convertible(module):
        return _switch_norm_for(module, stats, kw)
    if _looks_like_norm(module):
        left[type(module).__name__] += 1
        return module
    for name, child in list(module.named_children()):
        new = _convert(child, stats, kw, left)
        if new is not child:
            setattr(module, name, new)
    return module


def convert(model: nn.Module, stats: Optional[Sequence[str]] = None, strict: bool = False, **kw) -> nn.Module:
    """Replace every BatchNorm, SyncBatchNorm, FrozenBatchNorm2d and GroupNorm of ``model`` by SN.

    Affine parameters, running statistics, ``eps``, ``momentum`` and ``track_running_stats``
    are carried over, so with importance weights one-hot on BN (``stats=("bn",)``), or on GN
    for GroupNorm layers (``stats=("gn",)``), the converted model computes what the original
    did, in training and eval. BatchNormNd becomes SwitchNormNd; SyncBatchNorm and GroupNorm
    (which accept any rank) become the rank-agnostic :class:`SwitchNorm`. timm's norm +
    activation layers (``BatchNormAct2d``, ``GroupNormAct``, ...) become
    :class:`SwitchNormAct2d`/:class:`SwitchNormAct`, which apply the layer's own dropout and
    activation after SN. Frozen BN becomes a trainable SN layer (equal in eval).

    Other normalization layers (LayerNorm, InstanceNorm, timm's ``LayerNorm2d``, ``EvoNorm*``,
    subclasses of BatchNorm with a forward of their own, ...) are left as they are, and one
    warning lists their classes and counts; ``strict=True`` raises instead. Like detectron2's
    and torch's ``convert_sync_batchnorm``, modules are replaced in place and the (possibly new)
    root is returned, so always use the return value::

        model = sn.convert(torchvision.models.resnet50())

    Args:
        model: any module; if it is itself a norm layer, its replacement is returned.
        stats: statistics the new layers mix; default ``("in", "ln", "bn")``, and ``("ln", "bn")``
            in place of BatchNorm1d (IN coincides with LN on fully connected features).
        strict: raise ``ValueError`` when some normalization layers are left unconverted.
        **kw: further :class:`SwitchNorm` options for every new layer (``devices``,
            ``num_groups``, ``momentum``, ...), overriding carried-over values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if "devices" in kw:
        check_devices(kw["devices"])
    left = collections.Counter()
    model = _convert(model, stats, kw, left)
    if left:
        listed = ", ".join(f"{name} x{count}" for name, count in sorted(left.items()))
        message = (f"sn.convert left {sum(left.values())} normalization layers unconverted (SN replaces BatchNorm, "
                   f"SyncBatchNorm, FrozenBatchNorm2d, GroupNorm and timm's norm+act variants of them): {listed}")
        if strict:
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return model


def set_devices(model: nn.Module, devices: int) -> nn.Module:
    """Set the per-device chunk count of every SN and :class:`PerDeviceBatchNorm` layer."""
    check_devices(devices)
    for module in model.modules():
        if isinstance(module, (SwitchNorm, PerDeviceBatchNorm)):
            module.devices = devices
    return model
