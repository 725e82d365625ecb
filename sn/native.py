"""SN's CPU kernels in C (``sn/_native.c``): built on first use, then called through ctypes.

On small and mid-sized inputs the cost of SN in PyTorch operations is their number (about a
hundred ``(N, C)``-sized operations per training step, each costing microseconds of dispatch),
not the passes over the data. The C kernels do BatchNorm's passes over the data (forward: the
rows' moments, then the output; backward: the rows' gradient sums, then ``dx``), multi-threaded
with the OpenMP runtime PyTorch itself uses, and every ``(N, C)``-sized step (Eqn. 3-5, the
Appendix, the softmax and its gradient) as plain loops in double precision.

Used for float32/float64 CPU tensors when a C compiler is found (``$CC``, else
``cc``/``gcc``/``clang``); the library is compiled once per source, compiler and CPU into
``$SN_CACHE_DIR`` (default ``~/.cache/switchnorm/kernels``), which takes about a second, and
SN layers load it when they are made. Where they do not run is decided in one place,
:func:`sn.functional.select_implementation`; under ``torch.compile`` the kernels are called as
custom operators (:mod:`sn.native_ops`).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

OP_CODES = {"in": 0, "ln": 1, "gn": 2, "bn": 3}
_SOURCE = Path(__file__).with_name("_native.c")
# dtype: (C type, suffix, one-pass row moments): see row_moments in _native.c
_TYPES = {torch.float32: ("float", "f32", 1), torch.float64: ("double", "f64", 0)}
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]
_lock = threading.Lock()
_state = {"tried": False, "lib": None, "error": None}


def _compiler() -> Optional[str]:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cache_dir() -> Path:
    """``$SN_CACHE_DIR``, else ``~/.cache/switchnorm/kernels`` (``$XDG_CACHE_HOME`` honoured), else,
    where that cannot be written, a folder of this user's in the system's temporary directory."""
    root = os.environ.get("SN_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "switchnorm" / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"switchnorm-kernels-{user}"


def _unit() -> str:
    """The translation unit: ``_native.c``'s body once per floating type."""
    parts = [f'#define REAL {c_type}\n#define SFX {suffix}\n#define ONE_PASS {one_pass}\n#include "{_SOURCE.name}"\n'
             '#undef REAL\n#undef SFX\n#undef ONE_PASS\n' for c_type, suffix, one_pass in _TYPES.values()]
    return "".join(parts)


def _openmp() -> bool:
    """Whether PyTorch runs on OpenMP: then the kernels use the same runtime (``libgomp``/``libomp``
    is already loaded, so the library's reference resolves to it) and its thread count."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _cpu_id() -> str:
    """The CPU's feature flags (the library is built for the machine it runs on)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    """Compile the library into the cache (once per source, compiler, flags and CPU) and return
    its path. Raises ``RuntimeError`` with the compiler's output when no variant compiles."""
    threads = ["-fopenmp"] if _openmp() else []
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    errors = []
    # this CPU's vector units and PyTorch's OpenMP, then without each (e.g. Apple's clang has no
    # OpenMP: one thread); the first that compiles is kept
    for extra in (["-march=native"] + threads, threads, []) if threads else (["-march=native"], []):
        flags = _FLAGS + extra
        key = hashlib.sha256("\0".join([_SOURCE.read_text(), _unit(), cc, version, " ".join(flags), _cpu_id(),
                                        sys.platform]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"sn_native_{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # then an atomic rename: safe when
        os.close(fd)                                                  # several processes build at once
        try:
            result = subprocess.run([cc, *flags, "-I", str(_SOURCE.parent), "-x", "c", "-", "-o", tmp, "-lm"],
                                    input=_unit(), capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{cc} {' '.join(flags)}: {result.stderr.strip()}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("\n".join(errors))


_P, _I64, _INT, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_FORWARD_ARGS = [_P, _P, _I64, _I64, _I64, _I64, _I64, _INT, _P, _P, _P, _P, _P, _P, _P, _F64, _P, _P, _P, _INT,
                 _INT]
_BACKWARD_ARGS = [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT, _P, _P, _P, _P, _P, _P, _F64, _P, _P, _P, _P,
                  _P, _P, _INT, _INT]


def library():
    """The loaded kernels (a ``ctypes.CDLL``), building them on the first call; ``None`` when
    they cannot be built (the reason is in :func:`status`; :func:`applies` warns about it)."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if not _state["tried"]:
            try:
                cc = _compiler()
                if cc is None:
                    raise RuntimeError("no C compiler found (set $CC, or install gcc or clang)")
                lib = ctypes.CDLL(str(_build(cc)))
                for _, suffix, _ in _TYPES.values():
                    getattr(lib, f"sn_forward_{suffix}").argtypes = _FORWARD_ARGS
                    getattr(lib, f"sn_backward_{suffix}").argtypes = _BACKWARD_ARGS
                _state["lib"] = lib
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state["error"] = str(err)
            _state["tried"] = True
    return _state["lib"]


def status() -> str:
    """One line: whether the C kernels are built and loaded, and if not, why."""
    lib = library()
    return "in use" if lib is not None else f"unavailable: {_state['error']}"


def takes(x: Tensor) -> bool:
    """Whether the C kernels can run SN on ``x``: a float32/float64 CPU tensor, kernels built
    (building them on the first call; warns once when they cannot be)."""
    if not (x.is_cpu and x.dtype in _TYPES):
        return False
    if _state["lib"] is not None:
        return True
    if library() is None and not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(f"sn: the C kernels are not available, SN runs on slower PyTorch operations "
                      f"({_state['error']}); set SN_NATIVE=0 to silence this", RuntimeWarning, stacklevel=4)
    return _state["lib"] is not None


def loaded_for(x: Tensor) -> bool:
    """:func:`takes` without building or warning (traceable by ``torch.compile``): whether the
    kernels are already loaded and take ``x``."""
    return x.is_cpu and x.dtype in _TYPES and _state["lib"] is not None


def _ptr(t: Optional[Tensor]):
    return None if t is None else t.data_ptr()


_OPS_ARRAYS = {}


def _ops_array(stats: Sequence[str]):
    """The statistic codes of ``stats`` as a C int array (cached per tuple)."""
    stats = tuple(stats)
    if stats not in _OPS_ARRAYS:
        if not stats or len(set(stats)) != len(stats) or any(op not in OP_CODES for op in stats):
            raise ValueError(f"stats must be distinct names out of {tuple(OP_CODES)}, got {stats}")
        _OPS_ARRAYS[stats] = (ctypes.c_int * len(stats))(*(OP_CODES[op] for op in stats))
    return _OPS_ARRAYS[stats]


def _as(t: Optional[Tensor], dtype) -> Optional[Tensor]:
    """``t`` contiguous in ``dtype``, for the kernels to read (``t`` itself when it already is;
    a detached copy otherwise). The kernels only read pointers: no graph is recorded either way."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.detach().to(dtype).contiguous()


def channels_last(x3: Tensor) -> bool:
    """Whether the ``(N, C, L)`` view ``x3`` lies in memory channels-last (as ``(N, L, C)``; the
    view of a channels-last image batch), which the kernels read as it is."""
    n, c, l = x3.shape
    return l > 1 and c > 1 and x3.stride() == (l * c, 1, c)


def readable(x3: Tensor) -> Tensor:
    """``x3`` itself when the kernels can read its layout (contiguous or channels-last), else a
    contiguous copy."""
    return x3 if x3.is_contiguous() or channels_last(x3) else x3.contiguous()


def batch_chunks(stats: Sequence[str], bn_mean: Optional[Tensor], devices: int) -> int:
    """The chunks the kernels split the batch into: ``devices`` where the BN branch uses the
    batch's statistics, else 1 (the chunks matter to nothing else; any batch size is fine)."""
    return devices if "bn" in stats and bn_mean is None else 1


def _check(status_code: int, kernel: str, shape) -> None:
    if status_code == -1:
        raise MemoryError(f"sn: the C {kernel} kernel could not allocate its (N, C)-sized buffers")
    if status_code != 0:
        raise ValueError(f"sn: the C {kernel} kernel got sizes it cannot normalize: input (N, C, L) = "
                         f"{tuple(shape)} (each must be >= 1, with groups dividing C and devices dividing N)")


def forward(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, gamma: Optional[Tensor], beta: Optional[Tensor],
            stats: Sequence[str], eps: float, num_groups: int, devices: int, bn_mean: Optional[Tensor],
            bn_var: Optional[Tensor], keep_moments: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """SN of ``x3`` ``(N, C, L)`` (contiguous or channels-last), no graph: ``(output, rows' moments (2, N, C)
    float64 or None, batch BN moments (2, D, C) or None)``. Every other tensor is contiguous in
    ``x3``'s dtype (the :func:`_as` form): the logits ``(K,)``, ``gamma``/``beta`` ``(C,)`` or
    None, and ``bn_mean``/``bn_var``, fixed ``(C,)`` statistics or None for the batch's."""
    n, c, l = x3.shape
    cl = channels_last(x3)
    if not (cl or x3.is_contiguous()):
        raise ValueError("sn: the C kernels read contiguous or channels-last (N, C, L) inputs")
    out = torch.empty_like(x3)  # (the same layout)
    moments = torch.empty((2, n, c), dtype=torch.float64) if keep_moments else None
    batch = "bn" in stats and bn_mean is None
    bn_out = torch.empty((2, devices, c), dtype=x3.dtype) if batch else None
    fn = getattr(library(), "sn_forward_" + _TYPES[x3.dtype][1])
    status_code = fn(x3.data_ptr(), out.data_ptr(), n, c, l, num_groups, devices, len(stats), _ops_array(stats),
                     mean_logits.data_ptr(), var_logits.data_ptr(), _ptr(bn_mean), _ptr(bn_var), _ptr(gamma),
                     _ptr(beta), eps, _ptr(None if moments is None else moments[0]),
                     _ptr(None if moments is None else moments[1]), _ptr(bn_out), int(cl), torch.get_num_threads())
    _check(status_code, "forward", x3.shape)
    return out, moments, bn_out


class NativeSwitchNorm(torch.autograd.Function):
    """SN's training forward and backward in the C kernels, saving the input and the rows'
    ``(N, C)`` moments. ``apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean,
    bn_var)`` with ``x3`` contiguous or channels-last; returns the output ``(N, C, L)`` and, when the BN branch
    uses the batch, its per-device moments. Under ``create_graph=True`` the backward returns
    the composite form's gradients as a graph (double backward)."""

    @staticmethod
    def forward(ctx, x3, mean_logits, var_logits, weight, bias, config, bn_mean=None, bn_var=None):
        dtype = x3.dtype
        inputs = [_as(t, dtype) for t in (mean_logits, var_logits, weight, bias, bn_mean, bn_var)]
        devices = batch_chunks(config.stats, bn_mean, config.devices)
        out, moments, bn_out = forward(x3, *inputs[:4], config.stats, config.eps, config.num_groups, devices,
                                       *inputs[4:], keep_moments=True)
        ctx.save_for_backward(x3, moments, mean_logits, var_logits, weight, bias, bn_mean, bn_var)
        ctx.config = config
        batch_bn = () if bn_out is None else (bn_out[0], bn_out[1])
        ctx.mark_non_differentiable(*batch_bn)
        ctx.set_materialize_grads(False)  # (no zero gradients made for the batch moments)
        return (out,) + batch_bn

    @staticmethod
    def backward(ctx, grad_out, *unused):
        if grad_out is None:  # the output was not used
            return (None,) * 8
        x3, moments, mean_logits, var_logits, weight, bias, bn_mean, bn_var = ctx.saved_tensors
        config, needs = ctx.config, ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: the gradients as a graph (double backward)
            from . import composite
            grads = composite.input_gradients((x3, mean_logits, var_logits, weight, bias), grad_out, config,
                                              bn_mean, bn_var)
            return tuple(g if needs[i] else None for i, g in enumerate(grads)) + (None,) * 3
        dtype = x3.dtype
        grads = backward(grad_out, x3, moments, *(_as(t, dtype) for t in (mean_logits, var_logits, weight, bn_mean,
                                                                           bn_var)),
                         config.stats, config.eps, config.num_groups, batch_chunks(config.stats, bn_mean,
                                                                                   config.devices),
                         needs[0], needs[3], needs[4])
        dtypes = [None if t is None else t.dtype for t in (x3, mean_logits, var_logits, weight, bias)]
        return tuple(t if t is None or t.dtype == dt else t.to(dt) for t, dt in zip(grads, dtypes)) + (None,) * 3


def backward(grad_out: Tensor, x3: Tensor, moments: Tensor, mean_logits: Tensor, var_logits: Tensor,
             gamma: Optional[Tensor], bn_mean: Optional[Tensor], bn_var: Optional[Tensor], stats: Sequence[str],
             eps: float, num_groups: int, devices: int, need_x: bool, need_gamma: bool, need_beta: bool):
    """The Appendix backward, no graph: ``(dx, d_mean_logits, d_var_logits, d_gamma, d_beta)`` in
    ``x3``'s dtype, None where not needed; the other arguments as the forward had them
    (:func:`forward`'s, and the rows' moments it returned)."""
    n, c, l = x3.shape
    dtype = x3.dtype
    cl = channels_last(x3)
    g = grad_out.reshape(x3.shape)
    if g.dtype != dtype:
        g = g.to(dtype)
    if g.stride() != x3.stride():  # the gradient in the input's layout
        g = torch.empty_like(x3).copy_(g)
    d_x = torch.empty_like(x3) if need_x else None
    d_mean_logits, d_var_logits = torch.empty(len(stats), dtype=dtype), torch.empty(len(stats), dtype=dtype)
    d_gamma = torch.empty(c, dtype=dtype) if need_gamma else None
    d_beta = torch.empty(c, dtype=dtype) if need_beta else None
    fn = getattr(library(), "sn_backward_" + _TYPES[dtype][1])
    status_code = fn(g.data_ptr(), x3.data_ptr(), _ptr(d_x), n, c, l, num_groups, devices, len(stats),
                     _ops_array(stats), mean_logits.data_ptr(), var_logits.data_ptr(), _ptr(bn_mean), _ptr(bn_var),
                     _ptr(gamma), eps, moments[0].data_ptr(), moments[1].data_ptr(), d_mean_logits.data_ptr(),
                     d_var_logits.data_ptr(), _ptr(d_gamma), _ptr(d_beta), int(cl), torch.get_num_threads())
    _check(status_code, "backward", x3.shape)
    return d_x, d_mean_logits, d_var_logits, d_gamma, d_beta


def switch_norm(x3: Tensor, mean_logits: Tensor, var_logits: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], config, bn_mean: Optional[Tensor] = None, bn_var: Optional[Tensor] = None,
                needs_grad: bool = True):
    """SN of ``x3`` ``(N, C, L)`` (float32/float64, CPU) on the C kernels: ``(output, per-device
    batch BN moments or None)``; through :class:`NativeSwitchNorm` when a gradient is needed.
    Contiguous and channels-last inputs are read as they are (the output has their layout)."""
    x3 = readable(x3)
    if needs_grad:
        out, *batch_bn = NativeSwitchNorm.apply(x3, mean_logits, var_logits, weight, bias, config, bn_mean, bn_var)
        return out, (tuple(batch_bn) if batch_bn else None)
    inputs = [_as(t, x3.dtype) for t in (mean_logits, var_logits, weight, bias, bn_mean, bn_var)]
    devices = batch_chunks(config.stats, bn_mean, config.devices)
    out, _, bn_out = forward(x3, *inputs[:4], config.stats, config.eps, config.num_groups, devices, *inputs[4:],
                             keep_moments=False)
    return out, (None if bn_out is None else (bn_out[0], bn_out[1]))


__all__ = ["NativeSwitchNorm", "backward", "batch_chunks", "forward", "library", "loaded_for", "status",
           "channels_last", "readable", "switch_norm", "takes"]
