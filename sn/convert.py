"""Put SN into an existing model."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .batchnorm import PerDeviceBatchNorm
from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, check_devices

_BY_CLASS = {nn.BatchNorm1d: SwitchNorm1d, nn.BatchNorm2d: SwitchNorm2d, nn.BatchNorm3d: SwitchNorm3d}


def _is_frozen_bn(module: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d (and detectron2's) without importing them: BN statistics
    # and affine held as buffers.
    return type(module).__name__ == "FrozenBatchNorm2d" and all(
        isinstance(getattr(module, n, None), torch.Tensor) for n in ("weight", "bias", "running_mean", "running_var")
    )


def _is_convertible(module: nn.Module) -> bool:
    return (isinstance(module, (_BatchNorm, nn.GroupNorm)) and not isinstance(module, SwitchNorm)) or _is_frozen_bn(module)


def _switch_norm_for(module: nn.Module, stats: Optional[Sequence[str]], kw: dict) -> SwitchNorm:
    """A new SN layer in place of ``module``, with what can be kept carried over."""
    ref = module.weight if isinstance(module.weight, torch.Tensor) else next(iter(module.buffers()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    if isinstance(module, nn.GroupNorm):
        cls, c = SwitchNorm, module.num_channels
        opts = {"eps": module.eps, "affine": module.affine}
        if stats is not None and "gn" in stats:
            opts["num_groups"] = module.num_groups
    elif _is_frozen_bn(module):
        cls, c = SwitchNorm2d, module.weight.numel()
        opts = {"eps": getattr(module, "eps", 1e-5), "affine": True}
    else:
        cls, c = _BY_CLASS.get(type(module), SwitchNorm), module.num_features
        opts = {"eps": module.eps, "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
        if isinstance(module, PerDeviceBatchNorm):
            opts["devices"] = module.devices
    if stats is None and cls is SwitchNorm1d:
        stats = ("ln", "bn")  # keep BN for FC features; IN coincides with LN there
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


def convert(model: nn.Module, stats: Optional[Sequence[str]] = None, **kw) -> nn.Module:
    """Replace every BatchNorm, SyncBatchNorm, FrozenBatchNorm2d and GroupNorm of ``model`` by SN.

    Affine parameters, running statistics, ``eps``, ``momentum`` and ``track_running_stats``
    are carried over, so with importance weights one-hot on BN the converted model computes
    what the original did. BatchNormNd becomes SwitchNormNd; SyncBatchNorm and GroupNorm (which
    accept any rank) become the rank-agnostic :class:`SwitchNorm`. Like detectron2's and
    torch's ``convert_sync_batchnorm``, modules are replaced in place and the (possibly new)
    root is returned, so always use the return value::

        model = sn.convert(torchvision.models.resnet50())

    Args:
        model: any module; if it is itself a norm layer, its replacement is returned.
        stats: statistics the new layers mix; default ``("in", "ln", "bn")``, and ``("ln", "bn")``
            in place of BatchNorm1d (IN coincides with LN on fully connected features).
        **kw: further :class:`SwitchNorm` options for every new layer (``devices``,
            ``num_groups``, ``momentum``, ...), overriding carried-over values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if "devices" in kw:
        check_devices(kw["devices"])
    if _is_convertible(model):
        return _switch_norm_for(model, stats, kw)
    for name, child in list(model.named_children()):
        new = convert(child, stats, **kw)
        if new is not child:
            setattr(model, name, new)
    return model


def set_devices(model: nn.Module, devices: int) -> nn.Module:
    """Set the per-device chunk count of every SN and :class:`PerDeviceBatchNorm` layer."""
    check_devices(devices)
    for module in model.modules():
        if isinstance(module, (SwitchNorm, PerDeviceBatchNorm)):
            module.devices = devices
    return model
