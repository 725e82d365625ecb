"""The Triton kernels compiled for real GPUs without one: every launch the wrappers in
sn.triton_kernels make (float32/float16/bfloat16, contiguous and channels_last, short rows
and ImageNet-sized ones, with and without a gradient) is specialized as Triton's launcher
would specialize it and compiled through ptxas (it ships with Triton) to sm_80 and sm_90
machine code; none may fail to compile or spill registers to local memory. The interpreter
tests (tests/test_sn_triton.py) check what the kernels compute; this checks that real hardware
gets code, which the interpreter cannot."""
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package (it ships with torch)")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="interpreted kernels cannot be compiled (tests/test_sn_triton.py runs them)")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from sn import triton_kernels as K  # noqa: E402

KERNELS = ("_row_moments_kernel", "_apply_rows_kernel", "_row_grad_sums_kernel")
TARGETS = (GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32))


class _Recorder:
    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


def _launches():
    """Every distinct kernel launch of the four wrappers over the cases above (not run)."""
    launches = []
    saved = {name: getattr(K, name) for name in KERNELS}
    try:
        for name in KERNELS:
            setattr(K, name, _Recorder(saved[name], launches))
        for dtype in K.DTYPES:
            for shape in ((2, 8, 3, 5), (4, 16, 14, 14), (2, 8, 56, 56)):  # L = 15, 196, 3136
                for layout in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(shape).to(dtype=dtype, memory_format=layout)
                    x3 = x.reshape(shape[0], shape[1], -1) if layout == torch.contiguous_format else \
                        x.permute(0, 2, 3, 1).reshape(shape[0], -1, shape[1]).transpose(1, 2)
                    rows = torch.rand(shape[:2])
                    K.row_moments(x3)
                    K.apply_rows(x3, rows, rows, rows)
                    K.row_grad_sums(torch.randn_like(x3), x3, rows)
                    K.grad_rows(torch.randn_like(x3), x3, rows, rows, rows, rows)
    finally:
        for name, fn in saved.items():
            setattr(K, name, fn)
    return launches


def _compile(fn, args, kwargs, target):
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__), signature, constexprs


def _ptxas_report(ptx: str, tmp: Path) -> str:
    """ptxas's own account of the kernel (registers, spill stores and loads)."""
    path = tmp / "kernel.ptx"
    path.write_text(ptx)
    tool = Path(triton.backends.nvidia.__path__[0]) / "bin" / "ptxas"
    arch = re.search(r"^\.target (\S+)", ptx, re.M).group(1)  # (sm_80, sm_90a: the arch Triton wrote for)
    done = subprocess.run([str(tool), "-v", f"--gpu-name={arch}", str(path), "-o", str(tmp / "kernel.cubin")],
                          capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def test_every_launch_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    launches = _launches()
    assert {fn.__name__ for fn, _, _ in launches} == set(KERNELS)
    seen = set()
    for fn, args, kwargs in launches:
        for target in TARGETS:
            compiled, signature, constexprs = _compile(fn, args, kwargs, target)
            key = (fn.__name__, target.arch, compiled.hash)
            if key in seen:
                continue
            seen.add(key)
            assert compiled.metadata.arch == f"sm{target.arch}"
            report = _ptxas_report(compiled.asm["ptx"], tmp_path)
            what = f"{fn.__name__} for sm{target.arch} ({signature}, {constexprs}): {report}"
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
            registers = re.search(r"Used (\d+) registers", report)
            assert spills and registers, what
            assert spills.groups() == ("0", "0"), f"spills registers: {what}"
            assert 0 < int(registers.group(1)) <= 255, what
    # (three dtypes x kernels x block shapes x gradient or not: many distinct programs per target)
    assert len(seen) >= 2 * 3 * 3, sorted(seen)
