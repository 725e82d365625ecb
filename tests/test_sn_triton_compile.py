"""The Triton kernels compiled for real GPUs without one: every launch the wrappers in
sn.triton_kernels make (float32/float16/bfloat16, contiguous and channels_last, short rows
and ImageNet-sized ones, with and without a gradient) is specialized as Triton's launcher
would specialize it and compiled through ptxas (it ships with Triton) to sm_80 and sm_90
machine code; none may fail to compile or spill registers to local memory. The interpreter
tests (tests/test_sn_triton.py) check what the kernels compute; this checks that real hardware
gets code, which the interpreter cannot."""
import os
import re

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package (it ships with torch)")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="interpreted kernels cannot be compiled (tests/test_sn_triton.py runs them)")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from bench.launch_cost import recorded_launches  # noqa: E402
from bench.triton_versions import path_launches, ptxas_report  # noqa: E402
from sn import triton_kernels as K  # noqa: E402
from sn import triton_path as TP  # noqa: E402
from sn.config import Config  # noqa: E402

TARGETS = (GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32))


def _launches():
    """Every distinct kind of kernel launch of sn.triton_path's forward and backward (recorded,
    not run; bench.triton_versions.path_launches, which also compiles them under other Triton
    releases): ``(kernel, args, constexprs)``."""
    return [(fn, args, kwargs) for fn, _, args, kwargs in path_launches()]


def _rows_view(x, layout):
    """The ``(N, C, L)`` view of ``x`` in ``layout``, as sn.functional makes it."""
    x = x.contiguous(memory_format=layout)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _source(fn, args, kwargs, target):
    """What Triton's launcher would compile for this launch: ``(source, options, key)``."""
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    key = (fn.__name__, target.arch, repr(signature), repr(constexprs), repr(attrs))
    return ASTSource(fn, signature, constexprs, attrs), options, key


def test_every_launch_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    launches = _launches()
    assert {fn.__name__ for fn, _, _ in launches} == {k.__name__ for k in K.KERNELS}
    seen = set()
    for fn, args, kwargs in launches:
        for target in TARGETS:
            src, options, key = _source(fn, args, kwargs, target)
            if key in seen:  # (the same specialization: the same machine code)
                continue
            seen.add(key)
            compiled = triton.compile(src, target=target, options=options.__dict__)
            assert compiled.metadata.arch == f"sm{target.arch}"
            report = ptxas_report(compiled.asm["ptx"], tmp_path)
            what = f"{fn.__name__} for sm{target.arch} ({key[2]}, {key[3]}): {report}"
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
            registers = re.search(r"Used (\d+) registers", report)
            assert spills and registers, what
            assert spills.groups() == ("0", "0"), f"spills registers: {what}"
            assert 0 < int(registers.group(1)) <= 255, what
    # (seven kernels (six a step) x three dtypes x block shapes x statistics: many distinct programs per target)
    assert len(seen) >= 2 * 7 * 3, sorted(seen)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels_last"])
def test_the_pass_over_the_data_loads_128_bits_at_a_time(layout):
    """The rows' moments of a ResNet stage's input (float32, (32, 64, 56, 56)): every thread reads
    its share of the tile in 128-bit loads in either layout (the tile runs along the pixels for
    NCHW and along the channels for channels_last). A tile laid across the contiguous axis gives
    32- or 64-bit loads a warp cannot coalesce: this guards the tiling's choice."""
    x3 = _rows_view(torch.empty(32, 64, 56, 56), layout)
    with recorded_launches() as launches:
        TP.forward(x3, torch.zeros(3), torch.zeros(3), None, None, Config(("in", "ln", "bn")), None, None)
    fn, _, args, kwargs = launches[0]
    src, options, _ = _source(fn, args, kwargs, TARGETS[1])
    ptx = triton.compile(src, target=TARGETS[1], options=options.__dict__).asm["ptx"]
    tile = kwargs["ROWS"] * kwargs["BLOCK"]
    per_thread = tile // (32 * options.num_warps)
    # the loop over the row's tiles (ptx names its header ".lr.ph" and its exit "._crit_edge"; the
    # loads of the rows' first values before it are scalar or vector depending on Triton's version)
    loop = re.search(r"%\.lr\.ph(.*?)%\._crit_edge", ptx, re.S)
    assert loop, ptx
    loads = re.findall(r"ld\.global(?:\.[a-z]+)*\.(v[24]\.)?b32", loop.group(1))
    assert loads and all(w == "v4." for w in loads), (kwargs, loads)
    assert len(loads) * 4 == per_thread, (kwargs, loads)
