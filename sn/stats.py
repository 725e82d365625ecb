"""The paper's "batch average": BN-branch statistics for inference, recomputed after training."""
from __future__ import annotations

import itertools
import warnings
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import average_running_stats
from .layers import SwitchNorm


def _batch_stat_layers(model: nn.Module):
    """Layers whose eval mode uses running statistics estimated from batches."""
    layers = []
    for m in model.modules():
        if isinstance(m, SwitchNorm) and "bn" in m.stats and m.track_running_stats:
            layers.append(m)
        elif isinstance(m, _BatchNorm) and m.track_running_stats:
            layers.append(m)
    return layers


def _default_forward(model: nn.Module, batch) -> None:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("update_stats got an empty batch tuple")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"update_stats feeds tensors or tuples whose first item is the input, got {type(batch).__name__}; "
            "pass forward=lambda model, batch: ... for other batch types"
        )
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    model(batch.to(param.device) if param is not None else batch)


@torch.no_grad()
def update_stats(
    model: nn.Module,
    batches: Iterable,
    num_batches: int = 200,
    forward: Optional[Callable[[nn.Module, object], None]] = None,
) -> nn.Module:
    """Recompute the running statistics of every BN branch by the paper's batch average.

    Sec. 2.1, "Inference": freeze the network, feed ``num_batches`` minibatches from the
    training set, and set each layer's BN statistics to the average of the batches' means
    and of their (unbiased) variances. Covers every :class:`SwitchNorm` with a BN branch and
    every plain BatchNorm layer. The rest of the model stays in eval mode (dropout off) while
    the norm layers compute batch statistics (in their per-device chunks); nothing is learned.
    Modes and momenta are restored afterwards, and on error the running statistics too.
    Under DDP (an initialised process group) every process feeds its own ``num_batches``
    batches and the averages are then averaged over the processes, so all hold the same.

    Args:
        model: the trained model.
        batches: an iterable of batches (e.g. a training ``DataLoader``): tensors, or tuples
            whose first item is the input.
        num_batches: how many batches to average over; the iterable must yield at least that many.
        forward: ``forward(model, batch)`` for other batch types. Default: ``model(batch[0])``.

    Returns:
        ``model``, with the averaged statistics in place. A model without such layers is
        returned unchanged with a warning that says so.

    Raises:
        ValueError: ``num_batches`` not positive, or ``batches`` yields fewer batches.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    layers = _batch_stat_layers(model)
    if not layers:
        warnings.warn(f"sn.update_stats: {type(model).__name__} has no layer with batch statistics to average "
                      f"(no SN layer with a BN branch and running statistics, no BatchNorm); nothing was changed",
                      UserWarning, stacklevel=2)
        return model
    forward = forward or _default_forward
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    ok = False
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after k batches, the mean of the k batch statistics
            m.train()
        fed = 0
        for batch in itertools.islice(batches, num_batches):
            forward(model, batch)
            fed += 1
        if fed < num_batches:
            raise ValueError(f"update_stats needs num_batches={num_batches} batches but the iterable gave only {fed}")
        average_running_stats(layers)  # under DDP: the average over every process's batches
        ok = True
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
        if not ok:
            for m, (mean, var, nbt) in zip(layers, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)
    return model
