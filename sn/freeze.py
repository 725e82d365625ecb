"""Turn a trained SN model into an ordinary one: every SN layer whose importance weights are one-hot
becomes the plain layer it computes in eval mode."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .convert import _WithActivation
from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .weights import switch_norm_layers

_BATCH_NORMS = {SwitchNorm1d: nn.BatchNorm1d, SwitchNorm2d: nn.BatchNorm2d, SwitchNorm3d: nn.BatchNorm3d}


def freeze_plan(model: nn.Module, argmax: bool = False, tol: float = 1e-6) -> List[Dict]:
    """What :func:`freeze` would do, one record per SN layer::

        {"layer": "layer1.0.bn1", "op": "bn", "action": "frozen", "weight_change": 0.0}

    ``op`` is the statistic the layer ends on (``None`` when it keeps a mixture); ``action`` is
    ``"frozen"`` or ``"kept"`` with a ``reason``; ``weight_change`` is the largest change of an
    importance weight that rounding to ``op`` makes (0 up to ``tol`` for one-hot layers).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze expects an nn.Module, got {type(model).__name__}")
    if not 0 <= tol < 0.5:
        raise ValueError(f"tol must be in [0, 0.5), got {tol!r}")
    records = []
    for name, layer in switch_norm_layers(model):
        weights = layer.importance()
        top_mean = max(weights["mean"], key=weights["mean"].get)
        top_var = max(weights["var"], key=weights["var"].get)
        change = max(1.0 - weights["mean"][top_mean], 1.0 - weights["var"][top_var])
        record = {"layer": name, "op": top_mean if top_mean == top_var else None, "weight_change": change}
        if top_mean != top_var:
            record.update(action="kept", reason=f"means choose {top_mean}, variances {top_var}")
        elif change > tol and not argmax:
            record.update(action="kept", reason=f"weights not one-hot (largest {1.0 - change:.4f}; pass argmax=True)")
        elif top_mean == "bn" and not layer.track_running_stats:
            record.update(action="kept", reason="BN branch without running statistics")
        elif top_mean == "bn" and not any(cls in _BATCH_NORMS for cls in type(layer).__mro__):
            record.update(action="kept", reason="rank-agnostic SwitchNorm: no BatchNorm class for unknown rank")
        else:
            record.update(action="frozen")
        records.append(record)
    return records


def _plain_layer(layer: SwitchNorm, op: str) -> nn.Module:
    factory = {"device": layer.mean_weight.device, "dtype": layer.mean_weight.dtype}
    c, eps, affine = layer.num_features, layer.eps, layer.affine
    if op == "bn":
        base = next(cls for cls in type(layer).__mro__ if cls in _BATCH_NORMS)
        new = _BATCH_NORMS[base](c, eps=eps, momentum=layer.momentum, affine=affine, **factory)
        with torch.no_grad():
            new.running_mean.copy_(layer.running_mean)
            new.running_var.copy_(layer.running_var)
            new.num_batches_tracked.copy_(layer.num_batches_tracked)
    else:  # IN = GroupNorm(C, C), LN = GroupNorm(1, C) (over (C, *), per-channel affine), GN
        groups = {"in": c, "ln": 1, "gn": layer.num_groups}[op]
        new = nn.GroupNorm(groups, c, eps=eps, affine=affine, **factory)
    if affine:
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            new.bias.copy_(layer.bias)
    new.train(layer.training)
    if isinstance(layer, _WithActivation):  # timm's norm + activation: keep the activation
        return nn.Sequential(new, layer.drop, layer.act)
    return new


def freeze(model: nn.Module, argmax: bool = False, tol: float = 1e-6) -> nn.Module:
    """Replace every SN layer whose importance weights are one-hot (within ``tol``; with
    ``argmax=True``, rounded to their largest weight) by the plain layer it computes in eval mode:
    ``nn.BatchNorm{1,2,3}d`` carrying the running statistics for BN, ``nn.GroupNorm`` for GN,
    LN (one group) and IN (one group per channel), with the affine parameters. Layers whose means
    and variances choose different statistics, or still mix them, stay SN. The frozen model
    folds BN into its convolutions with PyTorch's fusion utilities and exports like any model.

    Returns the (possibly new) root; :func:`freeze_plan` says what is done to each layer and how
    far ``argmax`` moves its weights.
    """
    plan = {r["layer"]: r for r in freeze_plan(model, argmax, tol)}
    if isinstance(model, SwitchNorm):
        record = plan[""]
        return _plain_layer(model, record["op"]) if record["action"] == "frozen" else model
    for name, layer in list(model.named_modules()):
        record = plan.get(name)
        if record is None or record["action"] != "frozen" or name == "":
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _plain_layer(layer, record["op"]))
    return model
