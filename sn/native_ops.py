"""The C kernels as PyTorch custom operators, for ``torch.compile`` on CPUs.

``torch.compile`` cannot trace into a ctypes call, but it keeps a custom operator as one opaque
node of its graph: ``switchnorm::forward`` and ``switchnorm::backward`` wrap
:func:`sn.native.forward` and :func:`sn.native.backward`, with shape functions for tracing and
the backward registered as the forward's autograd formula. Under compilation the layer calls
:func:`switch_norm` when the kernels are loaded (:func:`sn.native.loaded_for`), so a compiled
model has one graph with SN in it and SN runs at the kernels' speed; elsewhere it traces its
plain operations instead (GPUs, no kernels). The choice is made in
:func:`sn.functional.select_implementation`.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import native as SNN

_NAMES = {code: op for op, code in SNN.OP_CODES.items()}


def _stats(ops: Sequence[int]) -> Tuple[str, ...]:
    return tuple(_NAMES[code] for code in ops)


def _batch_bn(ops: Sequence[int], bn_mean: Optional[Tensor]) -> bool:
    return SNN.OP_CODES["bn"] in ops and bn_mean is None


@torch.library.custom_op("switchnorm::forward", mutates_args=(), device_types="cpu")
def forward_op(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               bn_mean: Optional[Tensor], bn_var: Optional[Tensor], ops: List[int], eps: float, num_groups: int,
               devices: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(output (N, C, L), the rows' moments (2, N, C) float64, batch BN moments (2, D, C), or
    (2, 0, C) when the BN branch, if any, uses ``bn_mean``/``bn_var``)``."""
    dtype = x3.dtype
    inputs = [SNN._as(t, dtype) for t in (mean_logits, var_logits, weight, bias, bn_mean, bn_var)]
    out, moments, bn_out = SNN.forward(x3.contiguous(), *inputs[:4], _stats(ops), eps, num_groups, devices,
                                       *inputs[4:], keep_moments=True)
    return out, moments, (x3.new_empty((2, 0, x3.shape[1])) if bn_out is None else bn_out)


@forward_op.register_fake
def _forward_shapes(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, ops, eps, num_groups, devices):
    n, c, _ = x3.shape
    return (x3.new_empty(x3.shape), x3.new_empty((2, n, c), dtype=torch.float64),
            x3.new_empty((2, devices if _batch_bn(ops, bn_mean) else 0, c)))


@torch.library.custom_op("switchnorm::backward", mutates_args=(), device_types="cpu")
def backward_op(grad_out: Tensor, x3: Tensor, moments: Tensor, mean_logits: Tensor, var_logits: Tensor,
                weight: Optional[Tensor], bn_mean: Optional[Tensor], bn_var: Optional[Tensor], ops: List[int],
                eps: float, num_groups: int, devices: int, need_x: bool,
                need_affine: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, d_mean_logits, d_var_logits, d_weight, d_bias)`` in ``x3``'s dtype; ``dx`` and the
    affine gradients are empty when not needed (operators return tensors, not None)."""
    dtype = x3.dtype
    inputs = [SNN._as(t, dtype) for t in (mean_logits, var_logits, weight, bn_mean, bn_var)]
    grads = SNN.backward(grad_out, x3.contiguous(), moments, *inputs, _stats(ops), eps, num_groups, devices, need_x,
                         need_affine, need_affine)
    return tuple(x3.new_empty((0,)) if t is None else t for t in grads)  # (distinct: outputs may not alias)


@backward_op.register_fake
def _backward_shapes(grad_out, x3, moments, mean_logits, var_logits, weight, bn_mean, bn_var, ops, eps, num_groups,
                     devices, need_x, need_affine):
    c, k = x3.shape[1], len(ops)
    affine = (c,) if need_affine else (0,)
    return (x3.new_empty(x3.shape if need_x else (0,)), x3.new_empty((k,)), x3.new_empty((k,)),
            x3.new_empty(affine), x3.new_empty(affine))


def _setup_context(ctx, inputs, output):
    x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, ops, eps, num_groups, devices = inputs
    ctx.save_for_backward(x3, output[1], mean_logits, var_logits, weight, bn_mean, bn_var)
    ctx.config = (ops, eps, num_groups, devices)
    ctx.dtypes = parameter_dtypes(mean_logits, var_logits, weight, bias)


def parameter_dtypes(mean_logits, var_logits, weight, bias):
    """What :func:`input_gradients` casts the parameters' gradients to."""
    return (mean_logits.dtype, var_logits.dtype, None if weight is None else weight.dtype,
            None if bias is None else bias.dtype)


def input_gradients(ctx, d_x, d_ml, d_vl, d_w, d_b):
    """The forward operator's gradients, for its 11 inputs (an autograd formula's return): those
    asked for, the parameters' in their dtypes (``ctx.dtypes``)."""
    needs, dtypes = ctx.needs_input_grad, ctx.dtypes
    return (d_x if needs[0] else None, d_ml.to(dtypes[0]), d_vl.to(dtypes[1]),
            d_w.to(dtypes[2]) if needs[3] else None, d_b.to(dtypes[3]) if needs[4] else None,
            None, None, None, None, None, None)


def _backward(ctx, grad_out, _grad_moments, _grad_bn):
    x3, moments, mean_logits, var_logits, weight, bn_mean, bn_var = ctx.saved_tensors
    ops, eps, num_groups, devices = ctx.config
    needs = ctx.needs_input_grad
    d_x, d_ml, d_vl, d_w, d_b = backward_op(grad_out, x3, moments, mean_logits, var_logits, weight, bn_mean, bn_var,
                                            ops, eps, num_groups, devices, needs[0], needs[3] or needs[4])
    return input_gradients(ctx, d_x, d_ml, d_vl, d_w, d_b)


forward_op.register_autograd(_backward, setup_context=_setup_context)


def switch_norm(x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None):
    """:func:`sn.native.switch_norm` through the custom operators (float32/float64 CPU)."""
    devices = SNN.batch_chunks(config.stats, bn_mean, config.devices)
    ops = [SNN.OP_CODES[op] for op in config.stats]
    out, _, bn_out = forward_op(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, ops, config.eps,
                                config.num_groups, devices)
    return out, ((bn_out[0], bn_out[1]) if _batch_bn(ops, bn_mean) else None)


__all__ = ["backward_op", "forward_op", "switch_norm"]
