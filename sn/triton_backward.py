"""The backward kernels of SN on Triton (see :mod:`sn.triton_kernels`): the rows' gradient sums,
the pooled sets' sums of the mixed moments' gradients with the affine gradients, the logits'
gradients and ``dx``."""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_forward import _pick, _row_offsets, _weights


@triton.jit
def row_grad_sums_kernel(g_ptr, x_ptr, mean_ptr, sg_ptr, sgx_ptr, rows, C, L, s_n, s_c, s_l,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < rows
    r64 = r.to(tl.int64)
    base = _row_offsets(r64, C, s_n, s_c)
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


@triton.jit
def _row_grads(offs, ok, C, mean_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr, w_ptr, HAS_W: tl.constexpr):
    """Per row: ``(d_mean, d_var, rstd * sum(g (x - mean)), sum(g), weight * rstd)``, the loss's
    gradients with respect to the row's mixed mean and variance and what builds the rest."""
    rstd = tl.load(rstd_ptr + offs, mask=ok, other=0.0)
    s_g = tl.load(sg_ptr + offs, mask=ok, other=0.0)
    s_gxc = tl.load(sgx_ptr + offs, mask=ok, other=0.0) + \
        (tl.load(mean_in_ptr + offs, mask=ok, other=0.0) - tl.load(mu_ptr + offs, mask=ok, other=0.0)) * s_g
    gr = rstd
    if HAS_W:
        gr = rstd * tl.load(w_ptr + offs % C, mask=ok, other=0.0).to(tl.float32)
    return -gr * s_g, -0.5 * gr * rstd * rstd * s_gxc, rstd * s_gxc, s_g, gr


@triton.jit
def mix_grad_kernel(mean_in_ptr, var_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr, w_ptr,
                    p_in_m, p_in_v, ln_dm, ln_dv, gn_dm, gn_dv, bn_dm, bn_dv, dw_ptr, db_ptr,
                    N, C, G, CG, D, S, SAMPLE_PROGRAMS,
                    HAS_IN: tl.constexpr, HAS_LN: tl.constexpr, HAS_GN: tl.constexpr, HAS_BN: tl.constexpr,
                    HAS_W: tl.constexpr, BLOCK_C: tl.constexpr, BG: tl.constexpr, BCG: tl.constexpr,
                    BS: tl.constexpr, BC: tl.constexpr):
    """Programs ``< SAMPLE_PROGRAMS``: one sample's sums of the rows' ``d_mean``/``d_var`` (IN's
    weighted by its moments, for the logits; LN's; GN's per group). The rest: ``BC`` channels'
    sums per device chunk (BN) and over the batch (the affine gradients)."""
    pid = tl.program_id(0)
    if pid < SAMPLE_PROGRAMS:
        row = pid.to(tl.int64) * C
        if HAS_IN or HAS_LN:
            s_m = tl.zeros([BLOCK_C], dtype=tl.float32)
            s_v = tl.zeros([BLOCK_C], dtype=tl.float32)
            p_m = tl.zeros([BLOCK_C], dtype=tl.float32)
            p_v = tl.zeros([BLOCK_C], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                dm, dv, _, _, _ = _row_grads(row + cc, cc < C, C, mean_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr,
                                             w_ptr, HAS_W)
                s_m += dm
                s_v += dv
                p_m += dm * tl.load(mean_in_ptr + row + cc, mask=cc < C, other=0.0)
                p_v += dv * tl.load(var_in_ptr + row + cc, mask=cc < C, other=0.0)
            if HAS_IN:
                tl.store(p_in_m + pid, tl.sum(p_m, axis=0))
                tl.store(p_in_v + pid, tl.sum(p_v, axis=0))
            if HAS_LN:
                tl.store(ln_dm + pid, tl.sum(s_m, axis=0))
                tl.store(ln_dv + pid, tl.sum(s_v, axis=0))
        if HAS_GN:
            for g0 in range(0, G, BG):
                gg = g0 + tl.arange(0, BG)
                gsum_m = tl.zeros([BG, BCG], dtype=tl.float32)
                gsum_v = tl.zeros([BG, BCG], dtype=tl.float32)
                for j0 in range(0, CG, BCG):
                    jj = j0 + tl.arange(0, BCG)
                    ok = (gg < G)[:, None] & (jj < CG)[None, :]
                    gdm, gdv, _, _, _ = _row_grads(row + gg[:, None] * CG + jj[None, :], ok, C, mean_in_ptr, mu_ptr,
                                                 rstd_ptr, sg_ptr, sgx_ptr, w_ptr, HAS_W)
                    gsum_m += gdm
                    gsum_v += gdv
                tl.store(gn_dm + pid * G + gg, tl.sum(gsum_m, axis=1), mask=gg < G)
                tl.store(gn_dv + pid * G + gg, tl.sum(gsum_v, axis=1), mask=gg < G)
    else:
        cc = (pid - SAMPLE_PROGRAMS) * BC + tl.arange(0, BC)
        c_ok = cc < C
        a_w = tl.zeros([BS, BC], dtype=tl.float32)
        a_b = tl.zeros([BS, BC], dtype=tl.float32)
        for d in range(0, D):
            a_m = tl.zeros([BS, BC], dtype=tl.float32)
            a_v = tl.zeros([BS, BC], dtype=tl.float32)
            for s0 in range(0, S, BS):
                ss = s0 + tl.arange(0, BS)
                ok = (ss < S)[:, None] & c_ok[None, :]
                offs = (d * S + ss).to(tl.int64)[:, None] * C + cc[None, :]
                dm, dv, wsum, bsum, _ = _row_grads(offs, ok, C, mean_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr,
                                                   w_ptr, HAS_W)
                a_m += dm
                a_v += dv
                a_w += wsum
                a_b += bsum
            if HAS_BN:
                tl.store(bn_dm + d * C + cc, tl.sum(a_m, axis=0), mask=c_ok)
                tl.store(bn_dv + d * C + cc, tl.sum(a_v, axis=0), mask=c_ok)
        tl.store(dw_ptr + cc, tl.sum(a_w, axis=0), mask=c_ok)
        tl.store(db_ptr + cc, tl.sum(a_b, axis=0), mask=c_ok)


@triton.jit
def _dot(a_ptr, b_ptr, size, BLOCK: tl.constexpr):
    """``sum(a * b)`` over ``size`` float32 values (``b_ptr`` may hold another float dtype)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i0 in range(0, size, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        acc += tl.load(a_ptr + i, mask=i < size, other=0.0) * tl.load(b_ptr + i, mask=i < size, other=0.0).to(
            tl.float32)
    return tl.sum(acc, axis=0)


@triton.jit
def _sum(a_ptr, size, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i0 in range(0, size, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        acc += tl.load(a_ptr + i, mask=i < size, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _softmax_grad(logit_ptr, out_ptr, gw, K: tl.constexpr):
    """The logits' gradient from the weights' ``gw`` (4-vector): ``w * (gw - sum(w gw))``."""
    w = _weights(logit_ptr, K)
    k = tl.arange(0, 4)
    tl.store(out_ptr + k, w * (gw - tl.sum(w * gw, axis=0)), mask=k < K)


@triton.jit
def _logit_grads(ml_ptr, vl_ptr, dml_ptr, dvl_ptr, p_in_m, p_in_v, ln_m, ln_v, ln_dm, ln_dv, gn_m, gn_v,
                 gn_dm, gn_dv, bn_m, bn_v, bn_dm, bn_dv, N, NG, DC,
                 K: tl.constexpr, IN_K: tl.constexpr, LN_K: tl.constexpr, GN_K: tl.constexpr,
                 BN_K: tl.constexpr, BLOCK: tl.constexpr):
    """The weights' gradients ``sum over rows of d_mean * mean_k`` (and the variances'), from the
    sums per pooled set, then the softmax's backward: stored at ``dml_ptr`` and ``dvl_ptr``."""
    k = tl.arange(0, 4)
    gm = tl.zeros([4], dtype=tl.float32)
    gv = tl.zeros([4], dtype=tl.float32)
    if IN_K >= 0:
        gm = tl.where(k == IN_K, _sum(p_in_m, N, BLOCK), gm)
        gv = tl.where(k == IN_K, _sum(p_in_v, N, BLOCK), gv)
    if LN_K >= 0:
        gm = tl.where(k == LN_K, _dot(ln_dm, ln_m, N, BLOCK), gm)
        gv = tl.where(k == LN_K, _dot(ln_dv, ln_v, N, BLOCK), gv)
    if GN_K >= 0:
        gm = tl.where(k == GN_K, _dot(gn_dm, gn_m, NG, BLOCK), gm)
        gv = tl.where(k == GN_K, _dot(gn_dv, gn_v, NG, BLOCK), gv)
    if BN_K >= 0:
        gm = tl.where(k == BN_K, _dot(bn_dm, bn_m, DC, BLOCK), gm)
        gv = tl.where(k == BN_K, _dot(bn_dv, bn_v, DC, BLOCK), gv)
    _softmax_grad(ml_ptr, dml_ptr, gm, K)
    _softmax_grad(vl_ptr, dvl_ptr, gv, K)


@triton.jit
def logit_grad_kernel(ml_ptr, vl_ptr, dml_ptr, dvl_ptr, p_in_m, p_in_v, ln_m, ln_v, ln_dm, ln_dv, gn_m, gn_v,
                      gn_dm, gn_dv, bn_m, bn_v, bn_dm, bn_dv, N, NG, DC,
                      K: tl.constexpr, IN_K: tl.constexpr, LN_K: tl.constexpr, GN_K: tl.constexpr,
                      BN_K: tl.constexpr, BLOCK: tl.constexpr):
    """One program: the logits' gradients (:func:`_logit_grads`), where no ``dx`` is wanted
    (otherwise ``grad_rows_kernel``'s first program computes them)."""
    _logit_grads(ml_ptr, vl_ptr, dml_ptr, dvl_ptr, p_in_m, p_in_v, ln_m, ln_v, ln_dm, ln_dv, gn_m, gn_v, gn_dm,
                 gn_dv, bn_m, bn_v, bn_dm, bn_dv, N, NG, DC, K, IN_K, LN_K, GN_K, BN_K, BLOCK)


@triton.jit
def _through_set(w_mean, w_var, dm_ptr, dv_ptr, m_ptr, i, ok, size, mean_in):
    """What a pooled set's moments (index ``i``, ``size`` rows, their gradients' sums at ``dm_ptr``
    and ``dv_ptr``) pass on to each row's ``(mean_in, var_in)``: the Appendix's
    d mu_set / d mu_row = 1 / size, d var_set / d mu_row = 2 (mu_row - mu_set) / size and
    d var_set / d var_row = 1 / size, times the set's weights."""
    to_var = w_var * tl.load(dv_ptr + i, mask=ok, other=0.0) / size
    to_mean = w_mean * tl.load(dm_ptr + i, mask=ok, other=0.0) / size + \
        2.0 * to_var * (mean_in - tl.load(m_ptr + i, mask=ok, other=0.0).to(tl.float32))
    return to_mean, to_var


@triton.jit
def grad_rows_kernel(g_ptr, x_ptr, dx_ptr, mean_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr, w_ptr, ml_ptr, vl_ptr,
                     ln_m, ln_dm, ln_dv, gn_m, gn_dm, gn_dv, bn_m, bn_dm, bn_dv,
                     dml_ptr, dvl_ptr, p_in_m, p_in_v, ln_v, gn_v, bn_v,
                     rows, C, L, G, CG, S, s_n, s_c, s_l,
                     K: tl.constexpr, IN_K: tl.constexpr, LN_K: tl.constexpr, GN_K: tl.constexpr,
                     BN_K: tl.constexpr, BN_BATCH: tl.constexpr, HAS_W: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr, LOGIT_BLOCK: tl.constexpr):
    """``dx`` for ROWS rows by STEPS tiles along them; the first program also computes the logits'
    gradients (:func:`_logit_grads`, before its rows: one launch fewer than a kernel of its own)."""
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        samples = rows // C
        _logit_grads(ml_ptr, vl_ptr, dml_ptr, dvl_ptr, p_in_m, p_in_v, ln_m, ln_v, ln_dm, ln_dv, gn_m, gn_v, gn_dm,
                     gn_dv, bn_m, bn_v, bn_dm, bn_dv, samples, samples * G, (samples // S) * C, K, IN_K, LN_K, GN_K,
                     BN_K, LOGIT_BLOCK)
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = r < rows
    r64 = r.to(tl.int64)
    n = r64 // C
    c = r64 % C
    dm, dv, _, _, gr = _row_grads(r64, row_ok, C, mean_in_ptr, mu_ptr, rstd_ptr, sg_ptr, sgx_ptr, w_ptr, HAS_W)
    wm = _weights(ml_ptr, K)
    wv = _weights(vl_ptr, K)
    mean_in = tl.load(mean_in_ptr + r64, mask=row_ok, other=0.0)
    d_mean = tl.zeros_like(dm)
    d_var = tl.zeros_like(dv)
    if IN_K >= 0:
        d_mean += _pick(wm, IN_K) * dm
        d_var += _pick(wv, IN_K) * dv
    if LN_K >= 0:
        dm_set, dv_set = _through_set(_pick(wm, LN_K), _pick(wv, LN_K), ln_dm, ln_dv, ln_m, n, row_ok, C, mean_in)
        d_mean += dm_set
        d_var += dv_set
    if GN_K >= 0:
        dm_set, dv_set = _through_set(_pick(wm, GN_K), _pick(wv, GN_K), gn_dm, gn_dv, gn_m, n * G + c // CG, row_ok,
                                      CG, mean_in)
        d_mean += dm_set
        d_var += dv_set
    if BN_BATCH:
        dm_set, dv_set = _through_set(_pick(wm, BN_K), _pick(wv, BN_K), bn_dm, bn_dv, bn_m, (n // S) * C + c, row_ok,
                                      S, mean_in)
        d_mean += dm_set
        d_var += dv_set
    base = _row_offsets(r64, C, s_n, s_c)[:, None]
    k_g = gr[:, None]  # dx = k_g g + k_x (x - mean_in) + k_0
    k_x = (2.0 / L) * d_var[:, None]
    k_0 = d_mean[:, None] / L
    for i in range(0, STEPS):
        t = (tl.program_id(1) * STEPS + i) * BLOCK + tl.arange(0, BLOCK)
        offs = base + t[None, :].to(tl.int64) * s_l
        ok = row_ok[:, None] & (t[None, :] < L)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        dx = k_g * g + k_x * (x - mean_in[:, None]) + k_0
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)
