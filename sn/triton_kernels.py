"""SN for CUDA tensors as seven Triton kernels (the default on GPUs of compute capability 8.0+).

A training step is three launches forward and three backward, however many statistics are
mixed (four backward when no input gradient is wanted: then the logits' gradients take a kernel
of their own); every ``(N, C)``-sized step (Eqn. 3-5, the softmax, the Appendix's backward and the
running averages) happens inside them, in float32 whatever the input's dtype (float32, float16,
bfloat16; the output keeps the input's). A *row* is one (sample, channel) of the ``(N, C, L)``
view; the kernels take the input's strides, so contiguous and channels-last inputs are read as
they lie.

Forward (:mod:`sn.triton_path` calls them):

1. :func:`row_moments`: every row's mean and biased variance (IN's statistics; one pass over
   values shifted by the row's first one).
2. :func:`pool`: LN and GN statistics per sample, BN statistics per device chunk and channel,
   each pooled from the rows' moments in the stable parallel form (``sn.moments``), and the
   running averages updated in place.
3. :func:`mix_apply`: per row the softmax-weighted mean and variance, then
   ``y = (x - mean) * weight * rstd + bias``; keeps the rows' mixed mean and ``rstd``.

Backward:

4. :func:`row_grad_sums`: every row's ``sum(g)`` and ``sum(g * (x - mean_in))``.
5. :func:`mix_grad`: the gradients of the mixed moments summed over each pooled set (per sample,
   group, device chunk and channel), and the affine parameters' gradients.
6. :func:`grad_rows`: per row the gradients reaching IN's moments, then
   ``dx = weight * rstd * g + 2 d_var_in / L (x - mean_in) + d_mean_in / L``; its first program
   also computes the importance logits' gradients.
7. :func:`logit_grad`: the logits' gradients alone (one program), when ``dx`` is not wanted.

The kernels live in :mod:`sn.triton_forward` (1-3, and the jit helpers both halves use) and
:mod:`sn.triton_backward` (4-7); this module is the one place that names them all, and the one
:mod:`sn.triton_path` launches them through (tests and ``bench.launches`` wrap them here).

``TRITON_INTERPRET=1`` (set before this module is imported) runs the same kernels on CPU
tensors, which is how ``tests/test_sn_triton.py`` checks them without a GPU.
"""
from __future__ import annotations

from .triton_backward import grad_rows_kernel, logit_grad_kernel, mix_grad_kernel, row_grad_sums_kernel
from .triton_forward import mix_apply_kernel, pool_kernel, row_moments_kernel

KERNELS = (row_moments_kernel, pool_kernel, mix_apply_kernel, row_grad_sums_kernel, mix_grad_kernel,
           grad_rows_kernel, logit_grad_kernel)

__all__ = ["KERNELS"] + [k.__name__ for k in KERNELS]
