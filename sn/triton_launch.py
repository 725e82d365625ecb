"""Launching sn's Triton kernels through their compiled programs (experimental, off by default).

``kernel[grid](*args, **constexprs)`` binds every argument in Python on every call (Triton's
``JITFunction.run``: the specialization of each argument, the cache key, the options), which
costs tens of microseconds a launch on a slow host, several times what the GPU spends on a small
kernel. :func:`launch` does that once per distinct call and keeps the compiled program, whose
``CompiledKernel[grid](*args)`` launches it directly. Its cache key is finer than Triton's
specialization, so a cached program is only ever reused for a call Triton would have compiled
the same way: an integer counts by its value, a tensor by its dtype and whether its address is a
multiple of 16 bytes, a float by its type alone (Triton specializes integers on their value's
divisibility, pointers on their dtype and 16-byte alignment, and floats not at all;
``tests/test_sn_triton_launch.py`` checks this against Triton's own binder). Triton's launch
hooks (profilers) are called as on its own path; switching its debug or instrumentation knobs
after a call has been cached is not followed.

Run the steps within ``with direct():``, set :data:`ENABLED` to ``True``, or start Python with
``SN_TRITON_DIRECT=1`` in the environment, to use it. It stays off until a GPU measurement shows
it ahead (``bench/bench_sn.py --device cuda`` times both); without a GPU (Triton's interpreter)
calls always take Triton's own path.

How a compiled program is launched is Triton's internal protocol, which has changed between
releases (up to Triton 3.2 the launcher took the runtime arguments alone, from 3.3 on the
constexprs too). Direct launches are made only under the releases :data:`VERIFIED` names
(``bench/triton_versions.py`` runs ``tests/test_sn_triton_launch.py`` under each); under any other
every launch takes Triton's own path, with a warning once, when they are switched on.
"""
from __future__ import annotations

import contextlib
import os
import warnings

from torch import Tensor

ENABLED = os.environ.get("SN_TRITON_DIRECT", "0").strip().lower() in ("1", "true", "yes", "on")
VERIFIED = ((3, 3), (3, 8))  # (the first and last Triton (major, minor) whose launch protocol is checked)


def _release(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:2])


_SUPPORTED = None  # (supported(), once triton is imported: sn imports this module without it)
_WARNED = []


def supported() -> bool:
    """Whether the installed Triton is one of the :data:`VERIFIED` releases."""
    global _SUPPORTED
    if _SUPPORTED is None:
        import triton

        _SUPPORTED = VERIFIED[0] <= _release(triton.__version__) <= VERIFIED[1]
    return _SUPPORTED


_MAX_ENTRIES = 4096  # (one per distinct call: shapes, dtypes, alignments; cleared when full)
_COMPILED: dict = {}


def spec_key(args) -> tuple:
    """What Triton's compiled program for these positional arguments depends on (or finer)."""
    return tuple((a.dtype, not a.data_ptr() & 15) if isinstance(a, Tensor) else float if type(a) is float else a
                 for a in args)


def tensor_key(*tensors) -> tuple:
    """Each tensor's dtype and whether its address is a multiple of 16 bytes (None for None): the
    part of a call site's key (:func:`launch_at`) that comes from tensors it did not allocate."""
    return tuple(None if t is None else (t.dtype, not t.data_ptr() & 15) for t in tensors)


def launch(kernel, grid, *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)``: the first call per distinct key through Triton, the
    later ones through the compiled program it returned. ``constexprs`` are the kernel's
    compile-time parameters (its last ones) and launch options such as ``num_warps``."""
    _launch(kernel, grid, None, args, constexprs)


def launch_at(site, kernel, grid, *args, **constexprs) -> None:
    """:func:`launch` keyed by its caller's ``site`` instead of a look at every argument. The
    caller promises that ``site`` (a hashable value, with ``constexprs``) determines the device and
    every argument's specialization: each integer's value, each tensor's dtype and 16-byte
    alignment (:func:`tensor_key` of the tensors it did not allocate itself; those it allocates are
    aligned by PyTorch's allocator, and views into them at offsets that ``site`` determines).
    ``tests/test_sn_triton_launch.py`` holds ``sn.triton_path``'s sites to that against Triton's
    binder. ``site`` None (a caller that does not compute one while direct launches are off) is
    :func:`launch`."""
    _launch(kernel, grid, site, args, constexprs)


def _launch(kernel, grid, site, args, constexprs) -> None:
    names = getattr(kernel, "arg_names", None)
    if not ENABLED or names is None:  # (off; or a wrapper of the kernel, e.g. a test's launch recorder)
        kernel[grid](*args, **constexprs)
        return
    if not (_SUPPORTED or supported()):  # (a Triton release whose launch protocol is not checked)
        if not _WARNED:
            import triton

            _WARNED.append(True)
            (first, last) = (".".join(map(str, release)) for release in VERIFIED)
            warnings.warn(f"sn.triton_launch: direct launches are checked with Triton {first} to {last}; with Triton "
                          f"{triton.__version__} every launch takes Triton's own path", RuntimeWarning, stacklevel=3)
        kernel[grid](*args, **constexprs)
        return
    # (the kernel by id: hashing a JITFunction is slow; the entry keeps it, and a hit checks it)
    key = (id(kernel), (args[0].device.index, spec_key(args)) if site is None else site, tuple(constexprs.items()))
    entry = _COMPILED.get(key)
    if entry is not None and entry[0] is kernel:
        entry[1][grid + (1,) * (3 - len(grid))](*args, *entry[2])
        return
    if any(not kernel.params[i].is_constexpr or names[i] not in constexprs for i in range(len(args), len(names))):
        raise TypeError(f"sn.triton_launch.launch: {kernel.__name__} takes its runtime arguments by position and "
                        f"every constexpr by keyword; got {len(args)} positional arguments and {sorted(constexprs)} "
                        f"for {names}")
    compiled = kernel[grid](*args, **constexprs)
    if compiled is None or not hasattr(compiled, "function"):  # (Triton's interpreter returns no program)
        return
    if len(_COMPILED) >= _MAX_ENTRIES:
        _COMPILED.clear()
    _COMPILED[key] = (kernel, compiled, tuple(constexprs[name] for name in names[len(args):]))


@contextlib.contextmanager
def direct(enabled: bool = True):
    """Within the block (forward and backward alike), :func:`launch` keeps and reuses compiled
    programs (``enabled``) or leaves every launch to Triton."""
    global ENABLED
    before, ENABLED = ENABLED, bool(enabled)
    try:
        yield
    finally:
        ENABLED = before


__all__ = ["ENABLED", "VERIFIED", "direct", "launch", "launch_at", "spec_key", "supported", "tensor_key"]
