"""BN-branch statistics across processes: synchronized SN and batch averages under DDP."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .moments import pool_moments


def group_size(group=None) -> int:
    """World size of ``group``, or 1 when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's input is the sum of all processes'
    output gradients (each process's loss depends on the reduced value), as in SyncBatchNorm."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """Differentiable sum over the processes of ``group``."""
    return _AllReduceSum.apply(tensor, group)


def sync_moments(mean: Tensor, var: Tensor, count: int, group=None) -> Tuple[Tensor, Tensor]:
    """Pool per-process moments ``(1, C)`` of ``count`` elements per channel into global ones.

    :func:`sn.moments.pool_moments` with the sets spanning the processes, each process's rows
    weighted by its count (exact for unequal counts)::

        M = sum_p n_p m_p / N,   V = sum_p n_p (v_p + (m_p - M)^2) / N

    The two sums are differentiable all-reduces.
    """
    total = torch.tensor([float(count)], dtype=mean.dtype, device=mean.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    global_mean, global_var, _ = pool_moments(mean, var, lambda t: all_reduce_sum(t * count, group), total)
    return global_mean, global_var


@torch.no_grad()
def average_running_stats(modules, group=None) -> None:
    """Average ``running_mean``/``running_var`` of ``modules`` over the processes (no-op alone)."""
    world = group_size(group)
    if world == 1:
        return
    for m in modules:
        for buf in (m.running_mean, m.running_var):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            buf.div_(world)
