"""The Triton path as PyTorch custom operators, for ``torch.compile`` on CUDA tensors.

``torch.compile`` keeps a custom operator as one opaque node of its graph, so a compiled model
runs SN on the Triton kernels of :mod:`sn.triton_path` instead of tracing the composite form
into the compiler's own kernels; under ``mode="reduce-overhead"`` the whole graph, SN's
launches included, is replayed from a CUDA graph. ``switchnorm::triton_forward`` and
``switchnorm::triton_backward`` wrap :func:`sn.triton_path.forward` and
:func:`sn.triton_path.backward`, with shape functions for tracing and the backward registered
as the forward's autograd formula. The operators are functional: the running averages are
updated by the caller from the batch moments the forward returns (in the traced graph), not in
the kernels. :func:`sn.functional.select_implementation` picks them (``"triton-op"``) where the
eager path would take the Triton kernels.

Operators return distinct tensors that alias neither their inputs nor each other, so the
statistics a call does not mix come back as empty placeholders ``(0,)``, which the backward
swaps back for a buffer the kernels can be pointed at (and never read).

Changing the operators' arguments or outputs needs new operator names: ``torch.compile``'s
on-disk caches know a custom operator by its name alone and would serve graphs compiled against
the former operators (``tests/conftest.py`` gives each test run a cache of its own).
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import triton_path as TP
from .config import Config
from .functional import _check_triton
from .native import OP_CODES
from .native_ops import input_gradients, parameter_dtypes

_NAMES = {code: op for op, code in OP_CODES.items()}


def _config(ops: Sequence[int], eps: float, num_groups: int, devices: int) -> Config:
    return Config(tuple(_NAMES[code] for code in ops), num_groups, devices, eps)


def _or(t: Tensor, placeholder: Tensor) -> Tensor:
    return t if t.numel() else placeholder


@torch.library.custom_op("switchnorm::triton_forward", mutates_args=())
def forward_op(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               bn_mean: Optional[Tensor], bn_var: Optional[Tensor], ops: List[int], eps: float, num_groups: int,
               devices: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                      Tensor, Tensor]:
    """``(output (N, C, L) in x3's dtype and layout, then float32: the rows' moments (N, C) x2,
    mixed mean and 1/std (N, C) x2, LN's moments (N,) x2, GN's (N, G) x2, the batch's BN moments
    (D, C) x2)``; each of LN's, GN's and BN's is ``(0,)`` where the call does not compute it
    (BN: where it uses ``bn_mean``/``bn_var``). ``x3`` must be laid out densely
    (:func:`sn.triton_path.dense`)."""
    _check_triton(x3)
    out, saved, _ = TP.forward(x3, mean_logits, var_logits, weight, bias, _config(ops, eps, num_groups, devices),
                               bn_mean, bn_var, None, save=True)
    kept = [saved.mean_in, saved.var_in, saved.mu, saved.rstd]
    for pair, computed in ((saved.ln, OP_CODES["ln"] in ops), (saved.gn, OP_CODES["gn"] in ops),
                           (saved.bn, OP_CODES["bn"] in ops and bn_mean is None)):
        kept += list(pair) if computed else [x3.new_empty((0,), dtype=torch.float32) for _ in pair]
    return (out, *kept)


@forward_op.register_fake
def _forward_shapes(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, ops, eps, num_groups, devices):
    n, c, _ = x3.shape
    f32 = dict(dtype=torch.float32)
    rows = [x3.new_empty((n, c), **f32) for _ in range(4)]
    shapes = (((n,), OP_CODES["ln"] in ops), ((n, num_groups), OP_CODES["gn"] in ops),
              ((devices, c), OP_CODES["bn"] in ops and bn_mean is None))
    pooled = [x3.new_empty(shape if computed else (0,), **f32) for shape, computed in shapes for _ in range(2)]
    return (torch.empty_like(x3), *rows, *pooled)


@torch.library.custom_op("switchnorm::triton_backward", mutates_args=())
def backward_op(grad_out: Tensor, x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                bn_mean: Optional[Tensor], bn_var: Optional[Tensor], saved: List[Tensor], ops: List[int], eps: float,
                num_groups: int, devices: int, need_x: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx in x3's dtype, or (0,) when not needed, then float32: d_mean_logits, d_var_logits,
    d_weight, d_bias)``; ``saved``: the forward's ten float32 outputs."""
    mean_in, var_in, mu, rstd, ln_m, ln_v, gn_m, gn_v, bn_m, bn_v = saved
    ln = (_or(ln_m, mean_in), _or(ln_v, mean_in))
    gn = (_or(gn_m, mean_in), _or(gn_v, mean_in))
    bn = (bn_m, bn_v) if bn_m.numel() else (bn_mean, bn_var) if bn_mean is not None else (mean_in, mean_in)
    dx, d_ml, d_vl, d_w, d_b = TP.backward(grad_out, x3, mean_logits, var_logits, weight,
                                           _config(ops, eps, num_groups, devices), bn_mean,
                                           TP._Forward(mean_in, var_in, mu, rstd, ln, gn, bn), need_dx=need_x)
    return (x3.new_empty((0,)) if dx is None else dx), d_ml, d_vl, d_w, d_b


@backward_op.register_fake
def _backward_shapes(grad_out, x3, mean_logits, var_logits, weight, bn_mean, bn_var, saved, ops, eps, num_groups,
                     devices, need_x):
    c, k = x3.shape[1], len(ops)
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(x3) if need_x else x3.new_empty((0,)), x3.new_empty((k,), **f32),
            x3.new_empty((k,), **f32), x3.new_empty((c,), **f32), x3.new_empty((c,), **f32))


def _setup_context(ctx, inputs, output):
    x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, ops, eps, num_groups, devices = inputs
    ctx.save_for_backward(x3, mean_logits, var_logits, weight, bn_mean, bn_var, *output[1:])
    ctx.config = (ops, eps, num_groups, devices)
    ctx.dtypes = parameter_dtypes(mean_logits, var_logits, weight, bias)


def _backward(ctx, grad_out, *_unused):
    x3, mean_logits, var_logits, weight, bn_mean, bn_var, *saved = ctx.saved_tensors
    return input_gradients(ctx, *backward_op(grad_out, x3, mean_logits, var_logits, weight, bn_mean, bn_var, saved,
                                             *ctx.config, ctx.needs_input_grad[0]))


forward_op.register_autograd(_backward, setup_context=_setup_context)


def switch_norm(x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None):
    """:func:`sn.triton_path.switch_norm` through the custom operators: ``(output, the batch's
    BN moments (D, C) x2 or None)``; the caller updates the running averages."""
    batch_bn = "bn" in config.stats and bn_mean is None
    devices = config.devices if batch_bn else 1
    out, *saved = forward_op(TP.dense(x3), mean_logits, var_logits, weight, bias, bn_mean, bn_var,
                             [OP_CODES[op] for op in config.stats], config.eps, config.num_groups, devices)
    return out, ((saved[8], saved[9]) if batch_bn else None)


__all__ = ["backward_op", "forward_op", "switch_norm"]
