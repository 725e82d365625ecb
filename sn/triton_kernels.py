"""SN's passes over the data as Triton kernels, for CUDA tensors (opt-in: ``implementation="triton"``).

The four passes the PyTorch-operation path (:mod:`sn.fused`) makes with BatchNorm's kernels,
each one Triton kernel over the ``(N, C, L)`` rows, in float32 whatever the input's dtype
(float32, float16, bfloat16; the output keeps the input's):

- :func:`row_moments`: every row's mean and biased variance (one pass over values shifted by
  the row's first one);
- :func:`apply_rows`: ``y = (x - center) * scale + shift`` per row (the forward's output);
- :func:`row_grad_sums`: every row's ``sum(g)`` and ``sum(g * (x - mean_in))``;
- :func:`grad_rows`: ``dx = A g + B (x - mean_in) + C0`` per row.

Everything else, Eqn. 3-5 and their backward, stays ``(N, C)``-sized PyTorch operations on the
device (:func:`sn.composite.mix_statistics` under autograd), so no step synchronizes with the
host. Kernels take the tensors' strides, so contiguous and channels-last inputs are read as they
lie. ``TRITON_INTERPRET=1`` (set before this module is imported) runs the same kernels on CPU
tensors, which is how ``tests/test_sn_triton.py`` checks them without a GPU.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - triton ships with torch's Linux CUDA builds
    raise ImportError(f"sn's Triton kernels need the triton package ({err}); use implementation='torch'") from err

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _row_moments_kernel(x_ptr, mean_ptr, var_ptr, rows, C, L, s_n, s_c, s_l,
                        ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,) row indices n * C + c
    row_ok = r < rows
    r64 = r.to(tl.int64)
    base = (r64 // C) * s_n + (r64 % C) * s_c  # (ROWS,)
    first = tl.load(x_ptr + base, mask=row_ok, other=0.0).to(tl.float32)
    acc_s = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    acc_q = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        t = start + tl.arange(0, BLOCK)
        ok = row_ok[:, None] & (t[None, :] < L)
        v = tl.load(x_ptr + base[:, None] + t[None, :].to(tl.int64) * s_l, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, v - first[:, None], 0.0)
        acc_s += d
        acc_q += d * d
    s = tl.sum(acc_s, axis=1) / L
    q = tl.sum(acc_q, axis=1) / L
    tl.store(mean_ptr + r64, first + s, mask=row_ok)
    tl.store(var_ptr + r64, tl.maximum(q - s * s, 0.0), mask=row_ok)


@triton.jit
def _apply_rows_kernel(x_ptr, g_ptr, out_ptr, a_ptr, b_ptr, c0_ptr, center_ptr, rows, C, L, s_n, s_c, s_l,
                       HAS_G: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_ok = r < rows
    r64 = r.to(tl.int64)
    offs = ((r64 // C) * s_n + (r64 % C) * s_c)[:, None] + t[None, :].to(tl.int64) * s_l
    ok = row_ok[:, None] & (t[None, :] < L)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    center = tl.load(center_ptr + r64, mask=row_ok, other=0.0)
    b = tl.load(b_ptr + r64, mask=row_ok, other=0.0)
    c0 = tl.load(c0_ptr + r64, mask=row_ok, other=0.0)
    y = (x - center[:, None]) * b[:, None] + c0[:, None]
    if HAS_G:
        a = tl.load(a_ptr + r64, mask=row_ok, other=0.0)
        y += tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32) * a[:, None]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _row_grad_sums_kernel(g_ptr, x_ptr, mean_ptr, sg_ptr, sgx_ptr, rows, C, L, s_n, s_c, s_l,
                          ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < rows
    r64 = r.to(tl.int64)
    base = (r64 // C) * s_n + (r64 % C) * s_c
    m = tl.load(mean_ptr + r64, mask=row_ok, other=0.0)
    acc_g = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    acc_gx = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, L, BLOCK):
        t = start + tl.arange(0, BLOCK)
        ok = row_ok[:, None] & (t[None, :] < L)
        offs = base[:, None] + t[None, :].to(tl.int64) * s_l
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        acc_g += g
        acc_gx += tl.where(ok, g * (x - m[:, None]), 0.0)
    tl.store(sg_ptr + r64, tl.sum(acc_g, axis=1), mask=row_ok)
    tl.store(sgx_ptr + r64, tl.sum(acc_gx, axis=1), mask=row_ok)


def _blocks(l: int) -> Tuple[int, int]:
    """``(ROWS, BLOCK)``: pixels per step up to 1024, and as many rows per program as make ~2048
    elements, so that small maps still give each program a useful tile."""
    block = min(triton.next_power_of_2(l), 1024)
    return max(1, min(64, 2048 // block)), block


def _layout(x3: Tensor) -> Tuple[int, int, int]:
    return x3.stride(0), x3.stride(1), x3.stride(2)


def _rows(t: Tensor) -> Tensor:
    """An ``(N, C)`` tensor as the kernels read it: contiguous float32."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _check(x3: Tensor) -> None:
    if x3.dtype not in DTYPES:
        raise ValueError(f"sn's Triton kernels take float32, float16 or bfloat16 tensors, got {x3.dtype}")


def row_moments(x3: Tensor) -> Tuple[Tensor, Tensor]:
    """The rows' mean and biased variance, two float32 ``(N, C)`` tensors."""
    _check(x3)
    n, c, l = x3.shape
    mean = torch.empty((n, c), dtype=torch.float32, device=x3.device)
    var = torch.empty_like(mean)
    rows_per, block = _blocks(l)
    _row_moments_kernel[(triton.cdiv(n * c, rows_per),)](x3, mean, var, n * c, c, l, *_layout(x3),
                                                         ROWS=rows_per, BLOCK=block)
    return mean, var


def _apply(x3: Tensor, g, a, b, c0, center) -> Tensor:
    n, c, l = x3.shape
    out = torch.empty_like(x3)  # (the input's layout)
    rows_per, block = _blocks(l)
    grid = (triton.cdiv(n * c, rows_per), triton.cdiv(l, block))
    b, c0, center = _rows(b), _rows(c0), _rows(center)
    _apply_rows_kernel[grid](x3, x3 if g is None else g, out, b if a is None else _rows(a), b, c0, center, n * c, c,
                             l, *_layout(x3), HAS_G=g is not None, ROWS=rows_per, BLOCK=block)
    return out


def apply_rows(x3: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``(x - center) * scale + shift`` per row (``(N, C)`` float32 coefficients), in ``x3``'s
    dtype and layout."""
    _check(x3)
    return _apply(x3, None, None, scale, shift, center)


def in_layout(g: Tensor, x3: Tensor) -> Tensor:
    """``g`` with ``x3``'s strides (the kernels read both with one set of strides)."""
    g = g.reshape(x3.shape)
    return g if g.stride() == x3.stride() else torch.empty_like(x3, dtype=g.dtype).copy_(g)


def row_grad_sums(g: Tensor, x3: Tensor, mean_in: Tensor) -> Tuple[Tensor, Tensor]:
    """Every row's ``sum(g)`` and ``sum(g * (x - mean_in))``, float32 ``(N, C)``."""
    _check(x3)
    n, c, l = x3.shape
    g = in_layout(g, x3)
    sg = torch.empty((n, c), dtype=torch.float32, device=x3.device)
    sgx = torch.empty_like(sg)
    rows_per, block = _blocks(l)
    _row_grad_sums_kernel[(triton.cdiv(n * c, rows_per),)](g, x3, _rows(mean_in), sg, sgx, n * c, c, l,
                                                           *_layout(x3), ROWS=rows_per, BLOCK=block, num_warps=8)
    return sg, sgx


def grad_rows(g: Tensor, x3: Tensor, mean_in: Tensor, a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
    """``dx = a g + b (x - mean_in) + c0`` per row, in ``x3``'s dtype and layout."""
    _check(x3)
    return _apply(x3, in_layout(g, x3), a, b, c0, mean_in)


__all__ = ["DTYPES", "apply_rows", "grad_rows", "in_layout", "row_grad_sums", "row_moments"]
