"""SN on the Triton kernels of :mod:`sn.triton_kernels`: their launches and the autograd function.

:func:`switch_norm` is what :func:`sn.functional.switch_norm` calls for ``implementation="triton"``.
A training step launches three kernels forward (the rows' moments, the pooled moments with the
running averages, the output) and three backward (the rows' gradient sums, the pooled sets'
sums, ``dx`` with the logits' gradients; a fourth for the logits' gradients where no ``dx`` is
wanted), and never synchronizes with the host. Under
``create_graph=True`` the backward returns the composite form's gradients as a graph, so double
backward works as on the other paths.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import composite
from .config import Config
from .functional import TRITON_DTYPES as DTYPES, TRITON_MAX_ROWS as MAX_ROWS

try:
    import triton  # noqa: F401  (the clear error; the kernels module imports it)
except ImportError as err:  # pragma: no cover - triton ships with torch's Linux CUDA builds
    raise ImportError(f"sn's Triton kernels need the triton package ({err}); use implementation='torch'") from err

from . import triton_kernels as K
from . import triton_launch
from .triton_launch import launch_at, tensor_key

_TILE = 1024  # elements per tile of the (N, C)-sized kernels
_CHANNEL_TILE = 32  # channels per program of the per-channel (BN, affine) sums
_ROW_TILE = 1024  # pixels per step of the passes over the data
_MAX_ROWS = 32  # rows (sample, channel) per step
_TILE_ELEMENTS = 2048  # elements per step
_MAX_GRID_Y = 65535  # CUDA's limit on a grid's second axis (the output kernels' tiles along a row)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(v: int, cap: int) -> int:
    """The power of two at or above ``v`` (at least 1), at most ``cap``. (Plain integer maths:
    ``triton.next_power_of_2`` and ``triton.cdiv`` cost microseconds a call on the host.)"""
    return min(1 << (max(v, 1) - 1).bit_length(), cap)


def _blocks(n: int, c: int, l: int, channels_last: bool) -> Tuple[int, int, int]:
    """``(ROWS, BLOCK, STEPS)`` of the passes over the data: tiles of ROWS rows by BLOCK pixels
    (up to 2048 elements), STEPS tiles along the rows a program of the output kernels (4, or more
    where the row has over 65535 * 4 tiles, the grid's limit). The tile
    runs along the contiguous axis: the pixels for NCHW (BLOCK up to 1024, and as many rows as
    fill the tile, up to 32), the channels for channels_last (up to 32 channels, a 128-byte line
    of float32 at each pixel, and as many pixels as fill the tile), so that a warp's loads are
    coalesced in either layout (``tests/test_sn_triton_compile.py`` checks the loads are 128-bit;
    64 rows spill registers in the output kernel on sm_90)."""
    if channels_last:
        rows = _pow2(c, _MAX_ROWS)
        block = min(_pow2(l, _ROW_TILE), max(1, _TILE_ELEMENTS // rows))
    else:
        block = _pow2(l, _ROW_TILE)
        rows = max(1, min(_MAX_ROWS, _TILE_ELEMENTS // block))
    tiles = _cdiv(l, block)
    return rows, block, max(min(4, tiles), _cdiv(tiles, _MAX_GRID_Y))


class _Plan(NamedTuple):
    """One call's shape as the kernels take it: sizes, tiles and grids (computed once per shape,
    layout and configuration; see :func:`_plan`). Read-only: the dicts are passed as ``**kwargs``."""

    n: int
    c: int
    l: int
    strides: Tuple[int, int, int]  # the rows' (N, C, L) strides
    groups: int  # G (1 without GN)
    group_size: int  # C / G
    devices: int  # D chunks of the batch BN statistics (1 for running statistics)
    samples: int  # S = N / D
    batch_bn: bool  # the BN branch uses the batch's moments
    has: dict  # op -> whether it is mixed
    k: int  # statistics mixed
    positions: dict  # IN_K, LN_K, GN_K, BN_K: each op's position in the logits, or -1
    rows: int  # ROWS, BLOCK, STEPS of the passes over the data (_blocks)
    block: int
    steps: int
    tiles: dict  # the (N, C)-sized kernels' tiles
    row_grid: Tuple[int]  # one program per ROWS rows
    out_grid: Tuple[int, int]  # and per STEPS tiles along them
    pool_samples: int  # pool_kernel's per-sample programs (LN, GN)
    pool_grid: Tuple[int]  # (0,) when there is nothing to pool
    grad_samples: int  # mix_grad_kernel's per-sample programs (IN, LN, GN)
    grad_grid: Tuple[int]
    key: tuple  # what it was computed from (shape, strides, configuration, tile constants)


@functools.lru_cache(maxsize=1024)
def _cached_plan(n, c, l, strides, stats, groups, devices, batch_bn, constants) -> _Plan:
    if n * c > MAX_ROWS:
        raise ValueError(f"sn's Triton kernels take at most 2**31 - 64 rows (N * C), got N={n}, C={c}: use "
                         f"implementation='torch'")
    index = {op: (stats.index(op) if op in stats else -1) for op in ("in", "ln", "gn", "bn")}
    has = {op: i >= 0 for op, i in index.items()}
    devices = devices if batch_bn else 1
    samples = n // devices
    rows, block, steps = _blocks(n, c, l, strides[1] == 1 and l > 1)
    group_size = c // groups
    bcg, bc = _pow2(group_size, _TILE), _pow2(c, _CHANNEL_TILE)
    tiles = dict(BLOCK_C=_pow2(c, _TILE), BCG=bcg, BG=_pow2(groups, max(1, _TILE // bcg)), BC=bc,
                 BS=_pow2(samples, max(1, _TILE // bc)))
    channel_programs = _cdiv(c, bc)
    pool_samples = n if has["ln"] or has["gn"] else 0
    grad_samples = n if has["in"] or has["ln"] or has["gn"] else 0
    return _Plan(n, c, l, strides, groups, group_size, devices, samples, batch_bn, has, sum(has.values()),
                 {f"{op.upper()}_K": i for op, i in index.items()}, rows, block, steps, tiles,
                 (_cdiv(n * c, rows),), (_cdiv(n * c, rows), _cdiv(l, block * steps)),
                 pool_samples, (pool_samples + (channel_programs if batch_bn else 0),),
                 grad_samples, (grad_samples + channel_programs,),
                 (n, c, l, strides, stats, groups, devices, batch_bn, constants))


def _plan(x3: Tensor, config: Config, bn_mean: Optional[Tensor]) -> _Plan:
    n, c, l = x3.shape
    # (the tile constants are part of the key: the tests set them small to turn every loop)
    return _cached_plan(n, c, l, x3.stride(), config.stats, config.num_groups, config.devices,
                        "bn" in config.stats and bn_mean is None,
                        (_TILE, _CHANNEL_TILE, _ROW_TILE, _MAX_ROWS, _TILE_ELEMENTS, _MAX_GRID_Y))


class _Forward(NamedTuple):
    """What the forward computed that the backward reads (float32)."""

    mean_in: Tensor
    var_in: Tensor
    mu: Optional[Tensor]  # the rows' mixed mean (N, C)
    rstd: Optional[Tensor]  # 1 / sqrt(mixed variance + eps) (N, C)
    ln: Tuple[Tensor, Tensor]  # (N,) each, or placeholders
    gn: Tuple[Tensor, Tensor]  # (N, G)
    bn: Tuple[Tensor, Tensor]  # batch (D, C) or running (C,) moments


def _check(x3: Tensor) -> None:
    if x3.dtype not in DTYPES:
        raise ValueError(f"sn's Triton kernels take float32, float16 or bfloat16 tensors, got {x3.dtype}")


def _elsewhere(x3: Tensor) -> bool:
    """Whether ``x3`` is on a CUDA device other than the current one."""
    return x3.is_cuda and x3.device.index != torch.cuda.current_device()


def dense(x3: Tensor) -> Tensor:
    """``x3`` if it is laid out as contiguous or channels_last rows (so that ``empty_like`` gives
    an output with its strides, which the kernels write through), else a contiguous copy (e.g.
    of an input sliced along the channels, whose rows have gaps between them)."""
    n, c, l = x3.shape
    if x3.is_contiguous() or (x3.stride(1) == 1 and x3.stride(2) == c and (n == 1 or x3.stride(0) == c * l)):
        return x3
    return x3.contiguous()


def forward(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
            config: Config, bn_mean: Optional[Tensor], bn_var: Optional[Tensor], running=None, save: bool = False):
    """SN of ``x3`` ``(N, C, L)``: ``(output in x3's dtype and layout, what the backward needs,
    the batch's per-device BN moments when the BN branch used the batch and the running averages
    were not updated here, else None)``. ``running = (running_mean, running_var,
    momentum, unbias)`` updates those in place with the batch's BN moments (a float momentum)."""
    _check(x3)
    if dense(x3) is not x3:
        raise ValueError("sn.triton_path.forward takes (N, C, L) rows laid out densely: pass dense(x3)")
    if _elsewhere(x3):  # (Triton launches on the current device: a model on cuda:1 with cuda:0 current)
        with torch.cuda.device(x3.device):
            return forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var, running, save)
    p = _plan(x3, config, bn_mean)
    n, c, l = x3.shape
    has = p.has
    # (sn.triton_launch's key for these launches, when on: the plan fixes every integer and the
    # layout of what is allocated here; the rest is the given tensors' dtypes and alignment, and the flags)
    site = (p.key, x3.get_device(), tensor_key(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var,
                                               *(running[:2] if running is not None else (None, None))),
            save, running is not None) if triton_launch.ENABLED else None
    f32 = dict(dtype=torch.float32, device=x3.device)
    mean_in = torch.empty((n, c), **f32)
    var_in = torch.empty_like(mean_in)
    launch_at(site, K.row_moments_kernel, p.row_grid, x3, mean_in, var_in, n * c, c, l, *p.strides, ROWS=p.rows,
              BLOCK=p.block)
    ln = (torch.empty(n, **f32), torch.empty(n, **f32)) if has["ln"] else (mean_in, mean_in)
    gn = (torch.empty((n, p.groups), **f32), torch.empty((n, p.groups), **f32)) if has["gn"] else (mean_in, mean_in)
    if p.batch_bn:
        bn = (torch.empty((p.devices, c), **f32), torch.empty((p.devices, c), **f32))
    else:
        bn = (bn_mean, bn_var) if has["bn"] else (mean_in, mean_in)
    update = p.batch_bn and running is not None
    if p.pool_grid[0]:
        run_m, run_v, momentum, unbias = running if update else (mean_in, mean_in, 0.0, 1.0)
        launch_at(site, K.pool_kernel, p.pool_grid, mean_in, var_in, *ln, *gn, *bn, run_m, run_v, float(momentum),
                  float(unbias), n, c, p.groups, p.group_size, p.devices, p.samples, p.pool_samples, HAS_LN=has["ln"],
                  HAS_GN=has["gn"], HAS_BN=p.batch_bn, UPDATE=update, **p.tiles)
    out = torch.empty_like(x3)  # (the input's layout)
    mu, rstd = (torch.empty((n, c), **f32), torch.empty((n, c), **f32)) if save else (mean_in, mean_in)
    launch_at(
        site, K.mix_apply_kernel, p.out_grid,
        x3, out, mean_in, var_in, mean_logits, var_logits, weight if weight is not None else mean_in,
        bias if bias is not None else mean_in, *ln, *gn, *bn, mu, rstd, float(config.eps), n * c, c, l, p.groups,
        p.group_size, p.samples, *p.strides, K=p.k, **p.positions, HAS_W=weight is not None, HAS_B=bias is not None,
        SAVE=save, ROWS=p.rows, BLOCK=p.block, STEPS=p.steps)
    saved = _Forward(mean_in, var_in, mu, rstd, ln, gn, bn) if save else None
    return out, saved, (bn if p.batch_bn and not update else None)


def in_layout(g: Tensor, x3: Tensor) -> Tensor:
    """``g`` with ``x3``'s strides (the kernels read both with one set of strides)."""
    g = g.reshape(x3.shape)
    return g if g.stride() == x3.stride() else torch.empty_like(x3, dtype=g.dtype).copy_(g)


def backward(g: Tensor, x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
             config: Config, bn_mean: Optional[Tensor], saved: _Forward, need_dx: bool = True):
    """``(dx or None, d_mean_logits, d_var_logits, d_weight, d_bias)`` in float32 (dx: x3's dtype)."""
    if _elsewhere(x3):
        with torch.cuda.device(x3.device):
            return backward(g, x3, mean_logits, var_logits, weight, config, bn_mean, saved, need_dx)
    p = _plan(x3, config, bn_mean)
    n, c, l = x3.shape
    has = p.has
    g = in_layout(g, x3)
    site = (p.key, x3.get_device(), tensor_key(g, x3, mean_logits, var_logits, weight, saved.mean_in, saved.var_in,
                                               saved.mu, saved.rstd, *saved.ln, *saved.gn, *saved.bn),
            need_dx) if triton_launch.ENABLED else None
    f32 = dict(dtype=torch.float32, device=x3.device)
    s_g, s_gx = torch.empty((2, n, c), **f32).unbind()  # the rows' sums of g and of g * (x - mean)
    launch_at(site, K.row_grad_sums_kernel, p.row_grid, g, x3, saved.mean_in, s_g, s_gx, n * c, c, l, *p.strides,
              ROWS=p.rows, BLOCK=p.block, num_warps=8)
    in_dm, in_dv, ln_dm, ln_dv = torch.empty((4, n), **f32).unbind()  # IN's weighted sums, LN's sums (mean, var)
    gn_dm, gn_dv = torch.empty((2, n, p.groups), **f32).unbind() if has["gn"] else (in_dm, in_dm)
    bn_dm, bn_dv = torch.empty((2, p.devices, c), **f32).unbind() if has["bn"] else (in_dm, in_dm)
    d_weight, d_bias = torch.empty(c, **f32), torch.empty(c, **f32)  # (distinct: sn.triton_ops returns them)
    w = weight if weight is not None else saved.mean_in
    launch_at(
        site, K.mix_grad_kernel, p.grad_grid,
        saved.mean_in, saved.var_in, saved.mu, saved.rstd, s_g, s_gx, w, in_dm, in_dv, ln_dm, ln_dv, gn_dm, gn_dv,
        bn_dm, bn_dv, d_weight, d_bias, n, c, p.groups, p.group_size, p.devices, p.samples, p.grad_samples,
        HAS_IN=has["in"], HAS_LN=has["ln"], HAS_GN=has["gn"], HAS_BN=has["bn"], HAS_W=weight is not None, **p.tiles)
    d_mean_logits, d_var_logits = torch.empty(p.k, **f32), torch.empty(p.k, **f32)
    # (8 running sums in the logits' gradient: 1024-wide tiles spilled on sm_80 with Triton 3.6)
    logit_block = min(_TILE, 256)
    if not need_dx:
        launch_at(site, K.logit_grad_kernel, (1,), mean_logits, var_logits, d_mean_logits, d_var_logits, in_dm, in_dv,
                  *saved.ln, ln_dm, ln_dv, *saved.gn, gn_dm, gn_dv, *saved.bn, bn_dm, bn_dv, n, n * p.groups,
                  p.devices * c, K=p.k, **p.positions, BLOCK=logit_block)
        return None, d_mean_logits, d_var_logits, d_weight, d_bias
    dx = torch.empty_like(x3)  # (and the logits' gradients, in the first program)
    launch_at(
        site, K.grad_rows_kernel, p.out_grid,
        g, x3, dx, saved.mean_in, saved.mu, saved.rstd, s_g, s_gx, w, mean_logits, var_logits, saved.ln[0], ln_dm,
        ln_dv, saved.gn[0], gn_dm, gn_dv, saved.bn[0], bn_dm, bn_dv, d_mean_logits, d_var_logits, in_dm, in_dv,
        saved.ln[1], saved.gn[1], saved.bn[1], n * c, c, l, p.groups, p.group_size, p.samples, *p.strides, K=p.k,
        **p.positions, BN_BATCH=p.batch_bn, HAS_W=weight is not None, ROWS=p.rows, BLOCK=p.block, STEPS=p.steps,
        LOGIT_BLOCK=logit_block)
    return dx, d_mean_logits, d_var_logits, d_weight, d_bias


class TritonSwitchNorm(torch.autograd.Function):
    """SN on the Triton kernels, saving the input (and references to the parameters) and the
    ``(N, C)``-sized moments. ``apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean,
    bn_var, running)``; returns the output and, when the BN branch used the batch and the running
    averages were not updated in the kernels, its per-device moments ``(D, C)``."""

    @staticmethod
    def forward(ctx, x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None, running=None):
        out, saved, moments = forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var, running,
                                      save=True)
        ctx.save_for_backward(x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, saved.mean_in,
                              saved.var_in, saved.mu, saved.rstd, *saved.ln, *saved.gn, *saved.bn)
        ctx.config = config
        ctx.set_materialize_grads(False)
        moments = moments or ()
        ctx.mark_non_differentiable(*moments)
        return (out,) + tuple(moments)

    @staticmethod
    def backward(ctx, grad_out, *unused):
        if grad_out is None:  # the output was not used
            return (None,) * 9
        x3, mean_logits, var_logits, weight, bias, bn_mean, bn_var, *rest = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients as a graph (double backward)
            grads = composite.input_gradients((x3, mean_logits, var_logits, weight, bias), grad_out, ctx.config,
                                              bn_mean, bn_var)
            return tuple(g if ctx.needs_input_grad[i] else None for i, g in enumerate(grads)) + (None,) * 4
        saved = _Forward(*rest[:4], tuple(rest[4:6]), tuple(rest[6:8]), tuple(rest[8:10]))
        grads = backward(grad_out, x3, mean_logits, var_logits, weight, ctx.config, bn_mean, saved,
                         need_dx=ctx.needs_input_grad[0])
        inputs = (x3, mean_logits, var_logits, weight, bias)
        return tuple(None if not ctx.needs_input_grad[i] or g is None else g if g.dtype == t.dtype else g.to(t.dtype)
                     for i, (g, t) in enumerate(zip(grads, inputs))) + (None,) * 4


def switch_norm(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], config: Config, bn_mean: Optional[Tensor] = None,
                bn_var: Optional[Tensor] = None, running=None):
    """``(output (N, C, L), batch BN moments or None)``; see :func:`forward` for ``running``.
    The moments are returned only when the running averages are left to the caller."""
    x3 = dense(x3)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x3, mean_logits, var_logits, weight, bias)):
        out, *moments = TritonSwitchNorm.apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var,
                                               running)
        return out, (tuple(moments) if moments else None)
    out, _, moments = forward(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var, running)
    return out, moments


__all__ = ["DTYPES", "TritonSwitchNorm", "backward", "dense", "forward", "in_layout", "switch_norm"]
