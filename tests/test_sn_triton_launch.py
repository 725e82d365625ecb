"""sn.triton_launch: launching the Triton kernels through their compiled programs. Without a GPU:
its cache key is checked against Triton's own binder (the specialization Triton compiles each
launch of sn.triton_path for, as tests/test_sn_triton_compile.py records them) and its caching
against a stand-in kernel; on a GPU, training steps with it on match those with it off bit for
bit, aligned and misaligned inputs alike."""
import copy
import os
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package (it ships with torch)")

import sn  # noqa: E402
from sn import triton_launch as SNL  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
verified = pytest.mark.skipif(
    not SNL.supported(), reason=f"Triton {triton.__version__} is not a release direct launches are checked with (its "
                                f"binder and launcher differ): test_direct_launches_fall_back_under_other_releases")


def _misaligned(t):
    """``t``'s values at an address one element past a 16-byte boundary (same shape, strides, dtype)."""
    size = t.untyped_storage().nbytes() // t.element_size() + 16
    base = torch.zeros(size, dtype=t.dtype, device=t.device)
    view = base.as_strided(t.shape, t.stride(), 1)
    assert view.data_ptr() % 16 and view.dtype == t.dtype
    return view


@verified
@pytest.mark.skipif(INTERPRETED, reason="Triton's binder for a real GPU target (the interpreter binds nothing)")
def test_the_cache_key_is_finer_than_triton_s_specialization():
    """For every launch sn.triton_path makes (three dtypes, both layouts, five statistic sets), and
    for each with one tensor moved off its 16-byte alignment or a float changed: where the key
    says two launches are alike, Triton's binder specializes them alike. Triton does tell aligned
    from misaligned pointers, so the key must, and does."""
    from test_sn_triton_compile import TARGETS, _launches
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(TARGETS[1])
    binders = {}

    def triton_key(fn, args, kwargs):
        if fn not in binders:
            binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        _, specialization, options = binders[fn](*args, **kwargs)
        return repr(specialization), repr(sorted(options.items()))

    launches = _launches()
    seen_alignment = seen_float = 0
    for fn, args, kwargs in launches:
        key, spec = SNL.spec_key(args), triton_key(fn, args, kwargs)
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                variant = args[:i] + (_misaligned(a),) + args[i + 1:]
            elif type(a) is float:
                variant = args[:i] + (a * 0.37 + 0.5,) + args[i + 1:]
            else:
                continue
            variant_key, variant_spec = SNL.spec_key(variant), triton_key(fn, variant, kwargs)
            if variant_key == key:
                assert variant_spec == spec, (fn.__name__, i)
                seen_float += type(a) is float
            else:
                seen_alignment += variant_spec != spec
    assert seen_alignment > 100 and seen_float > 10, (seen_alignment, seen_float)


def _given_tensors_step(x3, stats, groups, devices, training, off):
    """One training step (forward with save, backward with and without dx) of sn.triton_path on
    ``x3``, with the tensors the caller gives named in ``off`` moved off their 16-byte alignment."""
    from sn import triton_path as TP
    from sn.config import Config

    def given(name, t):
        return _misaligned(t).copy_(t) if name in off else t

    c = x3.shape[1]
    x3 = given("x", x3)
    logits = [given("logits", torch.zeros(len(stats))) for _ in range(2)]
    weight, bias = given("weight", torch.ones(c)), given("bias", torch.zeros(c))
    running = [given("running", torch.zeros(c)), given("running", torch.ones(c))]
    config = Config(stats, groups, devices if training else 1, 1e-5)
    bn = (None, None) if training or "bn" not in stats else running
    update = (*running, 0.1, 1.01) if training and "bn" in stats else None
    _, saved, _ = TP.forward(x3, *logits, weight, bias, config, *bn, update, save=True)
    for need_dx in (True, False):
        TP.backward(given("g", torch.empty_like(x3)), x3, *logits, weight, config, bn[0], saved, need_dx=need_dx)


@verified
@pytest.mark.skipif(INTERPRETED, reason="Triton's binder for a real GPU target (the interpreter binds nothing)")
def test_sn_s_call_site_keys_determine_triton_s_specialization(monkeypatch):
    """sn.triton_path keys its launches by call site (sn.triton_launch.launch_at): over every
    statistic set, float32 and bfloat16, both layouts, short and long rows, and each tensor the
    caller gives (input, output gradient, logits, affine parameters, running statistics) moved off
    its 16-byte alignment in turn, launches with the same key get the same specialization from
    Triton's binder (and misaligning a given tensor does change it: the keys must see it)."""
    from bench.triton_versions import CONFIGS
    from test_sn_triton_compile import TARGETS, _rows_view
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    records = []
    monkeypatch.setattr(SNL, "_launch", lambda kernel, grid, site, args, constexprs:
                        records.append((kernel, site, args, constexprs)))
    with SNL.direct():  # (the sites are computed while direct launches are on)
        for dtype in (torch.float32, torch.bfloat16):
            for shape in ((2, 64, 3, 5), (4, 32, 14, 14)):
                for layout in (torch.contiguous_format, torch.channels_last):
                    x3 = _rows_view(torch.randn(shape, dtype=dtype), layout)
                    for config in CONFIGS:
                        for off in ((), ("x",), ("g",), ("logits",), ("weight",), ("bias",), ("running",)):
                            _given_tensors_step(x3, *config, off)
    backend = make_backend(TARGETS[1])
    binders, groups = {}, {}
    for kernel, site, args, constexprs in records:
        assert site is not None, kernel.__name__
        if kernel not in binders:
            binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, backend)
        _, specialization, options = binders[kernel](*args, **constexprs)
        spec = repr(specialization) + repr(sorted(options.items()))
        groups.setdefault((kernel.__name__, site, tuple(constexprs.items())), set()).add(spec)
    conflicts = {key[0]: specs for key, specs in groups.items() if len(specs) > 1}
    assert not conflicts, conflicts
    specs = {spec for specs in groups.values() for spec in specs}
    assert len(records) > 1000 and len(specs) > 100, (len(records), len(specs))


def _same_launch(a, b):
    """Whether two argument lists Triton's launcher got are the same launch: the same tensors,
    values, program, grid and stream (the launch metadata compared by content)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if hasattr(x, "get") and type(x).__name__ == "LazyDict":
            if x.get() != y.get():
                return False
        elif not (x is y or (type(x) is type(y) and not isinstance(x, torch.Tensor) and x == y)):
            return False
    return True


@verified
@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(),
                    reason="the stand-in driver replaces a GPU's; on a GPU machine the steps run for real "
                           "(test_steps_with_direct_launches_match_triton_s_own_bit_for_bit), and under "
                           "TRITON_INTERPRET=1 nothing is compiled to launch")
def test_direct_launches_hand_triton_s_launcher_what_its_own_path_does():
    """With Triton's driver replaced by one that compiles for sm_90 and records launches
    (bench.launch_cost.recording_driver): for every launch sn.triton_path makes (the cases of
    tests/test_sn_triton_compile.py), Triton's own path, sn.triton_launch's first call (through
    Triton) and its second (the compiled program launched directly) hand the launcher the same
    program, grid, stream and arguments."""
    from bench.launch_cost import recording_driver
    from test_sn_triton_compile import _launches

    direct, before = 0, dict(SNL._COMPILED)
    with recording_driver() as calls, SNL.direct():
        for fn, args, kwargs in _launches():
            start = len(calls)
            fn[(3, 2)](*args, **kwargs)
            for _ in range(2):
                SNL.launch(fn, (3, 2), *args, **kwargs)
            own, *ours = calls[start:]
            assert len(ours) == 2 and all(_same_launch(own, other) for other in ours), fn.__name__
            direct += 1
        assert len(SNL._COMPILED) > 20  # (distinct programs, each launched directly at least once)
    assert direct > 100 and SNL._COMPILED == before  # (the stand-in's programs are gone)


@verified
@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(),
                    reason="the stand-in driver replaces a GPU's; on a GPU machine the steps run for real "
                           "(test_steps_with_direct_launches_match_triton_s_own_bit_for_bit), and under "
                           "TRITON_INTERPRET=1 nothing is compiled to launch")
def test_sn_s_direct_launches_hand_triton_s_launcher_what_its_own_path_does(monkeypatch):
    """sn.triton_path's own launches (keyed by call site) with direct launches on, under the
    stand-in driver: two training steps of every statistic set in both layouts (the second
    launches every program directly), then each of those launches again on Triton's own path;
    the launcher gets the same from both."""
    from bench.launch_cost import recording_driver
    from bench.triton_versions import CONFIGS
    from test_sn_triton_compile import _rows_view

    made, launch = [], SNL._launch

    def spy(kernel, grid, site, args, constexprs):
        made.append((kernel, grid, args, constexprs))
        launch(kernel, grid, site, args, constexprs)

    monkeypatch.setattr(SNL, "_launch", spy)
    before = dict(SNL._COMPILED)
    with recording_driver() as launched, SNL.direct():
        for layout in (torch.contiguous_format, torch.channels_last):
            x3 = _rows_view(torch.randn(4, 32, 5, 3), layout)
            for config in CONFIGS:
                for off in ((), ()):  # (the second step: every program launched directly)
                    _given_tensors_step(x3, *config, off)
        ours = list(launched)
        launched.clear()
        for kernel, grid, args, constexprs in made:
            kernel[grid](*args, **constexprs)
        assert len(ours) == len(launched) == len(made) > 50
        assert all(_same_launch(a, b) for a, b in zip(ours, launched))
    assert SNL._COMPILED == before


class _Compiled:
    function = object()  # (what marks a compiled program)

    def __init__(self, calls):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args: self.calls.append(("direct", grid, args))


class _Kernel:
    """A stand-in for a Triton kernel ``(x, n, eps, BLOCK: constexpr, FLAG: constexpr)``."""

    arg_names = ["x", "n", "eps", "BLOCK", "FLAG"]
    params = [SimpleNamespace(is_constexpr=c) for c in (False, False, False, True, True)]
    __name__ = "stand_in_kernel"

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append(("triton", grid, args, kwargs))
            return _Compiled(self.calls)
        return run


@verified
def test_launch_reuses_a_program_only_for_calls_triton_would_compile_alike(monkeypatch):
    kernel = _Kernel()
    monkeypatch.setattr(SNL, "_COMPILED", {})
    x = torch.zeros(64)
    with SNL.direct():
        SNL.launch(kernel, (4,), x, 10, 0.5, BLOCK=32, FLAG=True)
        SNL.launch(kernel, (4, 2), x, 10, 0.25, BLOCK=32, FLAG=True)  # (another float: the same program)
        SNL.launch(kernel, (4,), x[4:], 10, 0.5, BLOCK=32, FLAG=True)  # (16 bytes on: still aligned)
    assert [c[0] for c in kernel.calls] == ["triton", "direct", "direct"]
    assert kernel.calls[1] == ("direct", (4, 2, 1), (x, 10, 0.25, 32, True))  # (constexprs in their places)
    assert kernel.calls[2][1] == (4, 1, 1) and kernel.calls[2][2][0].data_ptr() == x[4:].data_ptr()
    kernel.calls.clear()
    with SNL.direct():
        SNL.launch(kernel, (4,), x[1:], 10, 0.5, BLOCK=32, FLAG=True)  # misaligned
        SNL.launch(kernel, (4,), x.half(), 10, 0.5, BLOCK=32, FLAG=True)  # another dtype
        SNL.launch(kernel, (4,), x, 16, 0.5, BLOCK=32, FLAG=True)  # another integer
        SNL.launch(kernel, (4,), x, 10, 0.5, BLOCK=64, FLAG=True)  # another constexpr
        SNL.launch(kernel, (4,), x, 10, 0.5, BLOCK=32, FLAG=True, num_warps=8)  # another launch option
    assert [c[0] for c in kernel.calls] == ["triton"] * 5
    kernel.calls.clear()
    SNL.launch(kernel, (4,), x, 10, 0.5, BLOCK=32, FLAG=True)  # (off, as by default: always Triton's own path)
    assert [c[0] for c in kernel.calls] == ["triton"] and not SNL.ENABLED
    with SNL.direct():
        for bad in (dict(eps=0.5, BLOCK=32, FLAG=True), dict(BLOCK=32)):  # (a runtime argument by keyword; none)
            with pytest.raises(TypeError, match="runtime arguments by position and every constexpr by keyword"):
                SNL.launch(kernel, (4,), x, 10, **bad)


def test_direct_launches_fall_back_under_other_releases(monkeypatch):
    """Under a Triton release whose launch protocol is not checked (up to 3.2 the launcher took the
    runtime arguments alone; later ones may change again), switching direct launches on warns once
    and every launch takes Triton's own path."""
    first, last = SNL.VERIFIED
    assert SNL.supported() == (first <= SNL._release(triton.__version__) <= last)
    assert SNL._release("3.2.0") < first <= SNL._release("3.3.1") and SNL._release("3.8.0+git1a2b") <= last
    kernel = _Kernel()
    monkeypatch.setattr(SNL, "_COMPILED", {})
    monkeypatch.setattr(SNL, "_SUPPORTED", False)
    monkeypatch.setattr(SNL, "_WARNED", [])
    x = torch.zeros(64)
    with SNL.direct(), pytest.warns(RuntimeWarning, match=f"with Triton {triton.__version__} every launch takes "
                                                          f"Triton's own path") as caught:
        for _ in range(3):
            SNL.launch(kernel, (4,), x, 10, 0.5, BLOCK=32, FLAG=True)
            SNL.launch_at(("site",), kernel, (4,), x, 10, 0.5, BLOCK=32, FLAG=True)
    assert [c[0] for c in kernel.calls] == ["triton"] * 6 and SNL._COMPILED == {}
    assert len([w for w in caught if "sn.triton_launch" in str(w.message)]) == 1


@pytest.mark.parametrize("value,enabled", [("1", True), ("on", True), ("0", False), ("", False)])
def test_the_environment_switches_direct_launches_on(value, enabled):
    import subprocess
    import sys

    env = dict(os.environ, SN_TRITON_DIRECT=value)
    done = subprocess.run([sys.executable, "-c", "import sn; print(sn.triton_launch.ENABLED)"], env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(enabled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches compiled programs: needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_steps_with_direct_launches_match_triton_s_own_bit_for_bit(dtype, channels_last):
    """Three training steps and three eval calls, each twice: with sn.triton_launch on (the first
    call compiles or finds the programs, the second launches them directly) and off; the third
    input, of the same shape, is misaligned (it must not reuse the aligned inputs' programs)."""
    torch.manual_seed(0)
    layer = sn.SwitchNorm2d(24, stats=("in", "ln", "bn", "gn"), num_groups=4, implementation="triton").cuda()
    twin = copy.deepcopy(layer)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.randn(4, 24, 7, 9, device="cuda", dtype=dtype).contiguous(memory_format=fmt) * 2 + 1
          for _ in range(3)]
    xs[2] = _misaligned(xs[2]).copy_(xs[2])
    for model, enabled in ((layer, True), (twin, False)):
        model.grads, model.outs = [], []
        with SNL.direct(enabled):
            for x in xs:
                x = x.detach().requires_grad_()
                out = model.train()(x)
                out.backward(torch.cos(out.detach()))
                model.outs.append(out.detach())
                model.grads.append([x.grad] + [p.grad.clone() for p in model.parameters()])
                model.zero_grad()
            with torch.no_grad():
                model.outs += [model.eval()(x) for x in xs]
    for a, b in zip(layer.outs, twin.outs):
        assert torch.equal(a, b)
    for ga, gb in zip(layer.grads, twin.grads):
        for a, b in zip(ga, gb):
            assert torch.equal(a, b)
    for name, buf in layer.named_buffers():
        assert torch.equal(buf, getattr(twin, name)), name
