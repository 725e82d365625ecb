"""The forward kernels of SN on Triton (see :mod:`sn.triton_kernels`): the rows' moments, the
pooled moments with the running averages, and the output; and the jit helpers the backward
kernels (:mod:`sn.triton_backward`) share with them."""
from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _row_offsets(r64, C, s_n, s_c):
    return (r64 // C) * s_n + (r64 % C) * s_c


@triton.jit
def row_moments_kernel(x_ptr, mean_ptr, var_ptr, rows, C, L, s_n, s_c, s_l, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,) row indices n * C + c
    row_ok = r < rows
    r64 = r.to(tl.int64)
    base = _row_offsets(r64, C, s_n, s_c)  # (ROWS,)
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
def pool_kernel(mean_ptr, var_ptr, ln_m, ln_v, gn_m, gn_v, bn_m, bn_v, run_m, run_v, momentum, unbias,
                N, C, G, CG, D, S, SAMPLE_PROGRAMS,
                HAS_LN: tl.constexpr, HAS_GN: tl.constexpr, HAS_BN: tl.constexpr, UPDATE: tl.constexpr,
                BLOCK_C: tl.constexpr, BG: tl.constexpr, BCG: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    """Programs ``< SAMPLE_PROGRAMS``: one sample's LN (and GN) moments; the rest: BN's moments of
    ``BC`` channels in every device chunk, then their running averages."""
    pid = tl.program_id(0)
    if pid < SAMPLE_PROGRAMS:
        row = pid.to(tl.int64) * C
        if HAS_LN:  # the sample's C rows, in tiles (two passes: the pooled mean, then the spread about it)
            acc_ln = tl.zeros([BLOCK_C], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                acc_ln += tl.load(mean_ptr + row + cc, mask=cc < C, other=0.0)
            mu_ln = tl.sum(acc_ln, axis=0) / C
            acc_ln = tl.zeros([BLOCK_C], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                dev_ln = tl.where(cc < C, tl.load(mean_ptr + row + cc, mask=cc < C, other=0.0) - mu_ln, 0.0)
                acc_ln += tl.load(var_ptr + row + cc, mask=cc < C, other=0.0) + dev_ln * dev_ln
            tl.store(ln_m + pid, mu_ln)
            tl.store(ln_v + pid, tl.sum(acc_ln, axis=0) / C)
        if HAS_GN:  # BG groups at a time, their CG channels in tiles of BCG
            for g0 in range(0, G, BG):
                gg = g0 + tl.arange(0, BG)
                acc_gn = tl.zeros([BG, BCG], dtype=tl.float32)
                for j0 in range(0, CG, BCG):
                    jj = j0 + tl.arange(0, BCG)
                    ok = (gg < G)[:, None] & (jj < CG)[None, :]
                    acc_gn += tl.load(mean_ptr + row + gg[:, None] * CG + jj[None, :], mask=ok, other=0.0)
                mu_gn = tl.sum(acc_gn, axis=1) / CG
                acc_gn = tl.zeros([BG, BCG], dtype=tl.float32)
                for j0 in range(0, CG, BCG):
                    jj = j0 + tl.arange(0, BCG)
                    ok = (gg < G)[:, None] & (jj < CG)[None, :]
                    offs = row + gg[:, None] * CG + jj[None, :]
                    dev_gn = tl.where(ok, tl.load(mean_ptr + offs, mask=ok, other=0.0) - mu_gn[:, None], 0.0)
                    acc_gn += tl.load(var_ptr + offs, mask=ok, other=0.0) + dev_gn * dev_gn
                tl.store(gn_m + pid * G + gg, mu_gn, mask=gg < G)
                tl.store(gn_v + pid * G + gg, tl.sum(acc_gn, axis=1) / CG, mask=gg < G)
    else:
        cc = (pid - SAMPLE_PROGRAMS) * BC + tl.arange(0, BC)
        c_ok = cc < C
        total_m = tl.zeros([BC], dtype=tl.float32)
        total_v = tl.zeros([BC], dtype=tl.float32)
        for d in range(0, D):  # device chunks of S samples
            acc = tl.zeros([BS, BC], dtype=tl.float32)
            for s0 in range(0, S, BS):
                ss = s0 + tl.arange(0, BS)
                ok = (ss < S)[:, None] & c_ok[None, :]
                acc += tl.load(mean_ptr + (d * S + ss).to(tl.int64)[:, None] * C + cc[None, :], mask=ok, other=0.0)
            mu = tl.sum(acc, axis=0) / S
            acc = tl.zeros([BS, BC], dtype=tl.float32)
            for s0 in range(0, S, BS):
                ss = s0 + tl.arange(0, BS)
                ok = (ss < S)[:, None] & c_ok[None, :]
                offs = (d * S + ss).to(tl.int64)[:, None] * C + cc[None, :]
                dev = tl.where(ok, tl.load(mean_ptr + offs, mask=ok, other=0.0) - mu[None, :], 0.0)
                acc += tl.load(var_ptr + offs, mask=ok, other=0.0) + dev * dev
            var = tl.sum(acc, axis=0) / S
            tl.store(bn_m + d * C + cc, mu, mask=c_ok)
            tl.store(bn_v + d * C + cc, var, mask=c_ok)
            total_m += mu
            total_v += var
        if UPDATE:  # BatchNorm's moving averages of the chunks' average (unbiased variance)
            old_m = tl.load(run_m + cc, mask=c_ok, other=0.0)
            old_v = tl.load(run_v + cc, mask=c_ok, other=0.0)
            new_m = old_m.to(tl.float32) + momentum * (total_m / D - old_m.to(tl.float32))
            new_v = (1.0 - momentum) * old_v.to(tl.float32) + (momentum * unbias) * (total_v / D)
            tl.store(run_m + cc, new_m.to(run_m.dtype.element_ty), mask=c_ok)
            tl.store(run_v + cc, new_v.to(run_v.dtype.element_ty), mask=c_ok)


@triton.jit
def _weights(logit_ptr, K: tl.constexpr):
    """The softmax of the K (<= 4) logits, as a 4-vector (zeros past K; -inf logits give 0)."""
    k = tl.arange(0, 4)
    z = tl.load(logit_ptr + k, mask=k < K, other=float("-inf")).to(tl.float32)
    e = tl.exp(z - tl.max(z, axis=0))
    return e / tl.sum(e, axis=0)


@triton.jit
def _pick(w, k: tl.constexpr):
    return tl.sum(tl.where(tl.arange(0, 4) == k, w, 0.0), axis=0)


@triton.jit
def _mixed(r64, ok, C, G, CG, S, mean_in, var_in, wm, wv, ln_m, ln_v, gn_m, gn_v, bn_m, bn_v,
           IN_K: tl.constexpr, LN_K: tl.constexpr, GN_K: tl.constexpr, BN_K: tl.constexpr):
    """Eqn. 3 for the rows ``r64``: the weighted sums of their IN, LN, GN and BN moments."""
    n = r64 // C
    c = r64 % C
    mu = tl.zeros_like(mean_in)
    var = tl.zeros_like(mean_in)
    if IN_K >= 0:
        mu += _pick(wm, IN_K) * mean_in
        var += _pick(wv, IN_K) * var_in
    if LN_K >= 0:
        mu += _pick(wm, LN_K) * tl.load(ln_m + n, mask=ok, other=0.0)
        var += _pick(wv, LN_K) * tl.load(ln_v + n, mask=ok, other=0.0)
    if GN_K >= 0:
        mu += _pick(wm, GN_K) * tl.load(gn_m + n * G + c // CG, mask=ok, other=0.0)
        var += _pick(wv, GN_K) * tl.load(gn_v + n * G + c // CG, mask=ok, other=0.0)
    if BN_K >= 0:  # (batch moments (D, C) with S samples a chunk, or running ones (C,) with S = N)
        mu += _pick(wm, BN_K) * tl.load(bn_m + (n // S) * C + c, mask=ok, other=0.0).to(tl.float32)
        var += _pick(wv, BN_K) * tl.load(bn_v + (n // S) * C + c, mask=ok, other=0.0).to(tl.float32)
    return mu, var


@triton.jit
def mix_apply_kernel(x_ptr, out_ptr, mean_in_ptr, var_in_ptr, ml_ptr, vl_ptr, w_ptr, b_ptr,
                     ln_m, ln_v, gn_m, gn_v, bn_m, bn_v, mu_ptr, rstd_ptr, eps,
                     rows, C, L, G, CG, S, s_n, s_c, s_l,
                     K: tl.constexpr, IN_K: tl.constexpr, LN_K: tl.constexpr, GN_K: tl.constexpr,
                     BN_K: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SAVE: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < rows
    r64 = r.to(tl.int64)
    mean_in = tl.load(mean_in_ptr + r64, mask=row_ok, other=0.0)
    var_in = tl.load(var_in_ptr + r64, mask=row_ok, other=0.0)
    mu, var = _mixed(r64, row_ok, C, G, CG, S, mean_in, var_in, _weights(ml_ptr, K), _weights(vl_ptr, K),
                     ln_m, ln_v, gn_m, gn_v, bn_m, bn_v, IN_K, LN_K, GN_K, BN_K)
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = rstd
    c = r64 % C
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=row_ok, other=0.0).to(tl.float32)
    shift = tl.zeros_like(mu)
    if HAS_B:
        shift = tl.load(b_ptr + c, mask=row_ok, other=0.0).to(tl.float32)
    if SAVE:  # (for the backward: once per row)
        tl.store(mu_ptr + r64, mu, mask=row_ok & (tl.program_id(1) == 0))
        tl.store(rstd_ptr + r64, rstd, mask=row_ok & (tl.program_id(1) == 0))
    base = _row_offsets(r64, C, s_n, s_c)[:, None]
    for i in range(0, STEPS):  # (STEPS tiles a program: the rows' mixing is computed once for them)
        t = (tl.program_id(1) * STEPS + i) * BLOCK + tl.arange(0, BLOCK)
        offs = base + t[None, :].to(tl.int64) * s_l
        ok = row_ok[:, None] & (t[None, :] < L)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        y = (x - mu[:, None]) * scale[:, None] + shift[:, None]
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
