"""Read what SN learned, and optimize it as the paper does."""
from __future__ import annotations

from typing import Dict, List

from torch import nn

from .layers import SwitchNorm


def switch_norm_layers(model: nn.Module):
    """``(name, layer)`` for every SN layer of ``model`` (the root is named ``""``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SwitchNorm)]


def switch_weights(model: nn.Module) -> List[Dict]:
    """The post-softmax importance weights of every SN layer, as plain records.

    Returns one dict per layer, statistic and op::

        {"layer": "layer1.0.bn1", "stat": "mean", "op": "bn", "weight": 0.71}

    ``stat`` is ``"mean"`` (softmax of ``mean_weight``) or ``"var"`` (of ``var_weight``); the
    weights of one layer and stat sum to 1. Ready for ``pandas.DataFrame(records)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"switch_weights expects an nn.Module, got {type(model).__name__}")
    records = []
    for name, layer in switch_norm_layers(model):
        for stat, weights in layer.importance().items():
            for op, w in weights.items():
                records.append({"layer": name, "stat": stat, "op": op, "weight": w})
    return records


def param_groups(model: nn.Module, weight_decay: float = 1e-4) -> List[Dict]:
    """Optimizer parameter groups with SN's importance logits exempt from weight decay.

    The paper decays every parameter, gammas and betas included, except the importance
    logits (weight decay would pull every layer towards uniform weights). Use as
    ``torch.optim.SGD(sn.param_groups(model, 1e-4), lr=0.1, momentum=0.9)``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    logits = {id(p) for _, layer in switch_norm_layers(model) for p in (layer.mean_weight, layer.var_weight)}
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in logits]
    exempt = [p for p in model.parameters() if p.requires_grad and id(p) in logits]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def set_radius(model: nn.Module, radius=None, *, progress=None, start: float = 0.0, end: float = 0.8) -> int:
    """Set the sparsestmax radius of every ``selector="sparsestmax"`` SN layer of ``model``.

    Either ``radius`` (a number, clamped to each layer's largest radius ``sqrt((K-1)/K)``,
    where its weights are one-hot) or ``progress`` (the fraction of training done, in
    ``[0, 1]``) for the schedule of :func:`sn.selection.radius_at`: 0 until ``start``, growing
    linearly to each layer's largest radius at ``end``. Call it before each training step.

    Returns:
        the number of layers set (0 for a model without sparsestmax layers).
    """
    from .selection import max_radius, radius_at

    if (radius is None) == (progress is None):
        raise ValueError("set_radius takes either radius= or progress=")
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius < 0):
        raise ValueError(f"radius must be a number >= 0, got {radius!r}")
    count = 0
    for _, layer in switch_norm_layers(model):
        if layer.selector != "sparsestmax":
            continue
        k = len(layer.stats)
        value = radius_at(progress, k, start, end) if progress is not None else min(float(radius), max_radius(k))
        layer.radius.fill_(value)
        count += 1
    return count
