"""The Triton path (sn.triton_path, implementation="triton") against float64 maths and the
composite form: outputs, gradients and running statistics, in float32, float16 and bfloat16,
contiguous, channels_last and strided inputs, training and eval, with the kernels' real tiles and
with tiles so small that every loop turns; and the six launches a training step makes. On a GPU
they run on the GPU. Without one they
run in Triton's interpreter on CPU tensors, which must be switched on (TRITON_INTERPRET=1)
before anything imports triton (torch's compiler, timm and torchvision may have done so in this
process): test_the_kernels_in_triton_s_interpreter runs this file again in a process of its own
with it on, and the kernel tests here are skipped in the parent process for that reason."""
import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels need the triton package (it ships with torch)")

import sn  # noqa: E402
from sn import functional as SNF  # noqa: E402
from sn_reference import reference_switch_norm  # noqa: E402

ON_GPU = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"
kernels = pytest.mark.skipif(
    not (ON_GPU or INTERPRETED),
    reason="no GPU: test_the_kernels_in_triton_s_interpreter runs these in a process with TRITON_INTERPRET=1")
CASES = [  # (stats, devices, groups)
    (("in", "ln", "bn"), 1, None),
    (("in", "ln", "bn", "gn"), 2, 4),
    (("ln", "gn"), 1, 2),
    (("bn",), 2, None),
]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=2e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=1e-1, rtol=2e-2)}


def _layer(stats, devices, groups, seed=0, c=8):
    g = torch.Generator().manual_seed(seed)
    layer = sn.SwitchNorm2d(c, stats=stats, devices=devices, num_groups=groups, implementation="triton")
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(len(stats), generator=g))
        layer.var_weight.copy_(torch.randn(len(stats), generator=g))
        layer.weight.copy_(torch.rand(c, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer.to(DEVICE)


def _input(dtype, channels_last, seed=1, shape=(4, 8, 5, 3), offset=3.0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + offset
    x = x.to(device=DEVICE, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _reference(layer, x, running):
    p = [t.detach().cpu() for t in (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)]
    bn = (layer.running_mean.cpu(), layer.running_var.cpu()) if running else (None, None)
    return reference_switch_norm(x.float().cpu(), p[0], p[1], layer.stats, p[2], p[3], eps=layer.eps,
                                 num_groups=layer.num_groups or 1, devices=1 if running else layer.devices,
                                 bn_mean=bn[0], bn_var=bn[1])


@kernels
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stats,devices,groups", CASES)
def test_training_outputs_gradients_and_running_stats(stats, devices, groups, dtype, channels_last):
    layer = _layer(stats, devices, groups)
    twin = _layer(stats, devices, groups)  # the same layer on the composite form, in float64
    twin.implementation = "composite"
    twin = twin.double()
    x = _input(dtype, channels_last).requires_grad_()
    out = layer(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out.double().cpu(), _reference(layer, x, running=False), **TOL[dtype])
    x64 = x.detach().double().requires_grad_()
    ref = twin(x64)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = torch.autograd.grad(out, [x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias],
                              grad.to(dtype))
    want = torch.autograd.grad(ref, [x64, twin.mean_weight, twin.var_weight, twin.weight, twin.bias], grad)
    scale = 1.0 if dtype == torch.float32 else 50.0  # half-precision input and gradient
    for name, a, b in zip(["x", "mean_weight", "var_weight", "weight", "bias"], got, want):
        tol = TOL[dtype]
        torch.testing.assert_close(a.double(), b, atol=tol["atol"] * scale * 5, rtol=tol["rtol"] * scale, msg=name)
    if "bn" in stats:
        torch.testing.assert_close(layer.running_mean.double(), twin.running_mean, atol=1e-2 if scale > 1 else 1e-6,
                                   rtol=1e-2 if scale > 1 else 1e-5)
        torch.testing.assert_close(layer.running_var.double(), twin.running_var, atol=1e-2 if scale > 1 else 1e-5,
                                   rtol=1e-2 if scale > 1 else 1e-5)


@kernels
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("stats,devices,groups", CASES)
def test_eval_with_and_without_grad(stats, devices, groups, channels_last):
    layer = _layer(stats, devices, groups).eval()
    x = _input(torch.float32, channels_last, seed=3, shape=(3, 8, 4, 4))  # (any batch size in eval)
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out.double().cpu(), _reference(layer, x, running=True), **TOL[torch.float32])
    torch.testing.assert_close(layer(x.clone().requires_grad_()).detach(), out, atol=1e-6, rtol=1e-6)


def _against_composite(layer, x, tol=2e-5, double_backward=False, input_grad=True):
    """The layer's output, every gradient and the running statistics against the same layer on
    the composite form in float64; the input gradient (unless not ``input_grad``: then the input
    needs none) and the parameters' gradients."""
    twin = copy.deepcopy(layer).double()
    twin.implementation = "composite"
    x = x.requires_grad_(input_grad)
    x64 = x.detach().double().requires_grad_(input_grad)
    out, ref = layer(x), twin(x64)
    torch.testing.assert_close(out.double(), ref.detach(), atol=tol, rtol=tol)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).to(x.device)
    params = [name for name, p in layer.named_parameters()]
    inputs = [x] if input_grad else []
    got = torch.autograd.grad(out, inputs + [getattr(layer, n) for n in params], grad.to(x.dtype),
                              create_graph=double_backward)
    want = torch.autograd.grad(ref, [x64][:len(inputs)] + [getattr(twin, n) for n in params], grad,
                               create_graph=double_backward)
    for name, a, b in zip(["x"][:len(inputs)] + params, got, want):
        torch.testing.assert_close(a.double(), b.detach(), atol=tol * 5, rtol=tol * 5, msg=name)
    for name, buf in layer.named_buffers():
        torch.testing.assert_close(buf.double(), getattr(twin, name).double(), atol=tol, rtol=tol, msg=name)
    return twin, got, want


@kernels
@pytest.mark.parametrize("stats,devices,groups,channels_last",  # (every statistic set, both layouts: compiling
                         [case + (i % 2 == 1,) for i, case in enumerate(CASES)])  # takes long on a GPU host)
def test_compiled_layer_runs_the_triton_operators(stats, devices, groups, channels_last):
    """Under torch.compile the layer is one graph holding the custom operators
    switchnorm::triton_forward/backward (sn.triton_ops), and matches the composite form in
    float64: outputs, gradients, running statistics (updated in the graph), eval."""
    torch._dynamo.reset()
    layer = _layer(stats, devices, groups)
    x = _input(torch.float32, channels_last)
    explained = torch._dynamo.explain(copy.deepcopy(layer))(x.clone().requires_grad_())
    assert explained.graph_break_count == 0, explained.break_reasons
    targets = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
    assert any("switchnorm.triton_forward" in t for t in targets), targets
    twin = copy.deepcopy(layer).double()
    twin.implementation = "composite"
    compiled = torch.compile(layer)
    for step in range(2):
        xs = (x * (step + 1) + step).requires_grad_()
        x64 = xs.detach().double().requires_grad_()
        out, ref = compiled(xs), twin(x64)
        torch.testing.assert_close(out.double(), ref.detach(), atol=2e-5, rtol=2e-5)
        grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step)).to(DEVICE)
        names = [name for name, _ in layer.named_parameters()]
        got = torch.autograd.grad(out, [xs] + [getattr(layer, n) for n in names], grad.float())
        want = torch.autograd.grad(ref, [x64] + [getattr(twin, n) for n in names], grad)
        for name, a, b in zip(["x"] + names, got, want):
            torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4, msg=name)
    for name, buf in layer.named_buffers():
        torch.testing.assert_close(buf.double(), getattr(twin, name).double(), atol=1e-5, rtol=1e-5, msg=name)
    layer.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).double(), twin(x.double()), atol=2e-5, rtol=2e-5)


@kernels
def test_compiled_layer_with_dynamic_shapes_runs_the_triton_operators():
    """torch.compile(dynamic=True, fullgraph=True): one graph for batch and map sizes that change
    between calls, each call as in float64 (output, input gradient), and the running variance."""
    torch._dynamo.reset()
    layer = _layer(("in", "ln", "bn", "gn"), 1, 4)
    twin = copy.deepcopy(layer).double()
    twin.implementation = "composite"
    compiled = torch.compile(layer, dynamic=True, fullgraph=True)
    for n, hw in [(4, 5), (6, 7), (2, 3)]:
        x = _input(torch.float32, False, seed=n, shape=(n, 8, hw, hw))
        xs, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
        out, ref = compiled(xs), twin(x64)
        torch.testing.assert_close(out.double(), ref.detach(), atol=2e-5, rtol=2e-5)
        out.square().sum().backward()
        ref.square().sum().backward()
        torch.testing.assert_close(xs.grad.double(), x64.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.running_var.double(), twin.running_var, atol=1e-5, rtol=1e-5)


@kernels
@pytest.mark.parametrize("stats,devices,running,affine", [
    (("in", "ln", "bn"), 1, False, True), (("in", "ln", "bn", "gn"), 2, False, True),
    (("in", "ln", "bn"), 2, True, False), (("ln", "gn"), 1, False, True)])
def test_triton_operators_pass_opcheck(stats, devices, running, affine):
    """torch.library.opcheck on the operators: schema, fake-tensor shapes against the real
    outputs, the autograd registration and AOT dispatch (static and dynamic shapes)."""
    from sn import triton_ops as SNT

    g = torch.Generator().manual_seed(4)
    n, c = 4, 8
    x = (torch.randn(n, c, 6, generator=g) * 2 + 3).to(DEVICE).requires_grad_()
    params = [torch.randn(len(stats), generator=g).to(DEVICE).requires_grad_() for _ in range(2)]
    affine_params = [(torch.rand(c, generator=g) + 0.5).to(DEVICE).requires_grad_() for _ in range(2)] \
        if affine else [None, None]
    bn = [torch.randn(c, generator=g).to(DEVICE), (torch.rand(c, generator=g) + 0.5).to(DEVICE)] \
        if running else [None, None]
    ops = [SNT.OP_CODES[op] for op in stats]
    args = (x, *params, *affine_params, *bn, ops, 1e-5, 4 if "gn" in stats else 1, devices if not running else 1)
    torch.library.opcheck(SNT.forward_op, args)
    out, *saved = SNT.forward_op(*args)
    grad = torch.randn(out.shape, generator=g).to(DEVICE)
    for need_x in (True, False):  # (without dx the logits' gradients take a kernel of their own)
        torch.library.opcheck(SNT.backward_op, (grad, x.detach(), params[0].detach(), params[1].detach(),
                                                None if affine_params[0] is None else affine_params[0].detach(),
                                                *bn, [t.detach() for t in saved], *args[7:], need_x))


TILINGS = [  # (module constants of sn.triton_path): real sizes, and tiles small enough that every loop turns
    {},
    {"_TILE": 2, "_CHANNEL_TILE": 2, "_ROW_TILE": 4, "_MAX_ROWS": 2, "_TILE_ELEMENTS": 8, "_MAX_GRID_Y": 2},
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("n,c,l", [(1, 32, 4096 * 4096), (2, 64, 256**3), (1, 3, 2**31 - 1), (8, 64, 56 * 56)])
def test_plans_stay_within_the_grid_limits(n, c, l, channels_last):
    """The output kernels' grid keeps its second axis (tiles along a row) within CUDA's 65535 by
    giving each program more tiles on long rows (4096 x 4096 maps, 256**3 volumes); every pixel
    is covered; more than 2**31 - 64 rows (N * C) is a clear error."""
    from sn import triton_path as TP

    strides = (c * l, 1, c) if channels_last else (c * l, l, 1)
    plan = TP._cached_plan(n, c, l, strides, ("in", "ln", "bn"), 1, 1, True, ())
    assert plan.out_grid[1] <= 65535 and plan.row_grid[0] <= 2**31 - 1, plan
    assert plan.out_grid[1] * plan.steps * plan.block >= l and plan.out_grid[0] * plan.rows >= n * c
    assert plan.steps == min(4, -(-l // plan.block)) or plan.out_grid[1] > 65535 // 2  # (more only where needed)
    with pytest.raises(ValueError, match=r"at most 2\*\*31 - 64 rows \(N \* C\), got N=65536, C=32768"):
        TP._cached_plan(65536, 32768, 1, (32768, 1, 1), ("in",), 1, 1, False, ())


@kernels
@pytest.mark.parametrize("tiles", TILINGS, ids=["tiles", "small-tiles"])
@pytest.mark.parametrize("stats,devices,groups,shape", [
    (("in", "ln", "bn", "gn"), 3, 4, (6, 12, 3, 2)),  # 3 channels a group, 2 samples a device chunk
    (("gn", "bn"), 2, 3, (4, 12, 7, 1)),
    (("ln",), 1, None, (5, 9, 2, 2)),
    (("in",), 1, None, (2, 6, 4, 3)),
    (("bn", "in"), 1, None, (1, 6, 5, 5)),  # batch size 1
    (("in", "ln", "bn"), 1, None, (3, 20, 1, 1)),  # 1x1 maps
    (("in", "ln", "bn"), 1, None, (2, 4, 9, 9)),  # small tiles: 21 along a row, 11 a program (grid limit 2)
])
def test_every_loop_and_set_size(monkeypatch, tiles, stats, devices, groups, shape):
    """Sets whose sizes are no power of two and tiles smaller than the sets (so that every loop in
    the kernels runs more than once): outputs, gradients and running statistics as in float64."""
    from sn import triton_path
    for name, value in tiles.items():
        monkeypatch.setattr(triton_path, name, value)
    layer = _layer(stats, devices, groups, c=shape[1])
    _against_composite(layer, _input(torch.float32, False, seed=8, shape=shape))
    layer.momentum = None  # cumulative average: the factor 1 / num_batches_tracked
    _against_composite(layer, _input(torch.float32, True, seed=9, shape=shape))
    # the parameters' gradients alone (the logits' gradients in a kernel of their own)
    _against_composite(layer, _input(torch.float32, False, seed=10, shape=shape), input_grad=False)


@kernels
@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("in", "ln", "bn", "gn")])
def test_eval_gradients_of_every_parameter(stats):
    """Eval mode with the BN branch on running statistics: the logits' gradient includes them, the
    input's does not."""
    layer = _layer(stats, 1, 4 if "gn" in stats else None).eval()
    _against_composite(layer, _input(torch.float32, False, seed=10, shape=(3, 8, 4, 4)))
    _against_composite(layer, _input(torch.float32, False, seed=14, shape=(3, 8, 4, 4)), input_grad=False)


@kernels
def test_without_affine_and_as_1d_features():
    layer = sn.SwitchNorm2d(8, affine=False, implementation="triton").to(DEVICE)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([-0.6, 0.1, 0.4]))
    _against_composite(layer, _input(torch.float32, False, seed=11))
    layer = sn.SwitchNorm1d(12, stats=("ln", "bn"), implementation="triton").to(DEVICE)
    _against_composite(layer, torch.randn(6, 12, device=DEVICE) * 3 + 1)  # (N, C): rows of one value
    layer = sn.SwitchNorm1d(12, implementation="triton").to(DEVICE)  # LN + GN over features
    _against_composite(layer, torch.randn(1, 12, device=DEVICE) + 2)  # one sample


@kernels
def test_inputs_whose_rows_have_gaps_or_repeat():
    """The kernels write the output through the input's strides: an input sliced along the
    channels (gaps between rows), one broadcast from a single value per channel (stride 0) and a
    channels_last slice are copied to dense rows first (writing through their strides corrupted
    memory), and their gradients flow back through that copy."""
    big = _input(torch.float32, False, seed=13, shape=(3, 16, 5, 4))
    layer = _layer(("in", "ln", "bn"), 1, None)
    _against_composite(layer, big[:, ::2].detach())
    _against_composite(layer, big[:, :8, :1, :1].detach().expand(3, 8, 5, 4))
    _against_composite(layer, big.contiguous(memory_format=torch.channels_last)[:, 4:12].detach())
    _against_composite(layer, big[:1, 3:11].detach())  # (one sample)
    # and an output gradient with stride 0 (that of a sum)
    x, x64 = big[:, :8].detach().requires_grad_(), big[:, :8].detach().double().requires_grad_()
    twin = copy.deepcopy(layer).double()
    twin.implementation = "composite"
    (layer(x) * 3.0).sum().backward()
    (twin(x64) * 3.0).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.mean_weight.grad.double(), twin.mean_weight.grad, atol=1e-4, rtol=1e-4)


@kernels
def test_double_backward_is_the_composite_graph():
    layer = _layer(("in", "ln", "bn"), 1, None)
    twin, got, want = _against_composite(layer, _input(torch.float32, False, seed=12), double_backward=True)
    # the input gradient's norm, differentiated with respect to the logits and the affine weight
    wrt, wrt64 = [layer.mean_weight, layer.var_weight, layer.weight], [twin.mean_weight, twin.var_weight, twin.weight]
    for a, b in zip(torch.autograd.grad(got[0].square().sum(), wrt), torch.autograd.grad(want[0].square().sum(), wrt64)):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


@kernels
def test_large_offsets_and_tiny_maps_stay_accurate():
    layer = _layer(("in", "ln", "bn"), 1, None)
    for shape, offset in (((4, 8, 6, 6), 1e3), ((2, 8, 1, 1), 5.0), ((1, 8, 3, 3), 0.0)):
        x = _input(torch.float32, False, seed=4, shape=shape, offset=offset)
        out = layer(x)
        assert torch.isfinite(out).all()
        tol = 4 * offset * 2.0 ** -23 * float(layer.weight.detach().abs().max()) + 5e-5
        assert (out.double().cpu() - _reference(layer, x, running=False)).abs().max() < tol


@kernels
@pytest.mark.parametrize("radius", [0.35, 10.0], ids=["sparse", "one-hot"])
def test_sparsestmax_selection(radius):
    """Sparse SN on the Triton path: weights with exact zeros (as -inf log-weights) and one-hot
    ones give the composite float64 layer's output and gradients."""
    def make():
        torch.manual_seed(0)
        layer = sn.SwitchNorm2d(8, selector="sparsestmax", implementation="triton")
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([0.9, -0.4, 0.1]))
            layer.var_weight.copy_(torch.tensor([-0.2, 0.6, 0.5]))
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
        sn.set_radius(layer, radius)
        return layer
    layer, twin = make().to(DEVICE), make().double()
    twin.implementation = "composite"
    weights = layer.importance()
    assert 0.0 in weights["mean"].values() and 0.0 in weights["var"].values()
    x = _input(torch.float32, False, seed=5).requires_grad_()
    x64 = x.detach().double().cpu().requires_grad_()
    out, ref = layer(x), twin(x64)
    torch.testing.assert_close(out.double().cpu(), ref.detach(), atol=2e-5, rtol=1e-5)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got = torch.autograd.grad(out, [x, layer.mean_weight, layer.var_weight, layer.weight], grad.float().to(DEVICE))
    want = torch.autograd.grad(ref, [x64, twin.mean_weight, twin.var_weight, twin.weight], grad)
    for name, a, b in zip(["x", "mean_weight", "var_weight", "weight"], got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-4, rtol=1e-4, msg=name)


@kernels
def test_the_triton_path_is_taken_where_asked_and_by_default_on_cuda():
    x3 = _input(torch.float32, False).reshape(4, 8, -1)
    assert SNF.select_implementation(x3, requested="triton") == "triton"
    with sn.implementation("triton"):
        assert SNF.select_implementation(x3) == "triton"
    if not ON_GPU:  # (CPU tensors in the interpreter: "auto" keeps the C kernels or PyTorch operations)
        assert SNF.select_implementation(x3) in ("native", "torch")
        return
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # measured ahead of the torch path on an H200
        assert SNF.select_implementation(x3.to(dtype)) == "triton", dtype
    assert SNF.select_implementation(x3.double()) == "torch"  # (float64: the PyTorch-operation path)
    assert SNF.select_implementation(x3, requested="torch") == "torch"
    with sn.implementation("torch"):
        assert SNF.select_implementation(x3) == "torch"
    assert SNF.select_implementation(x3, sync=True) == "composite"


def test_which_gpus_take_the_triton_kernels_by_default(monkeypatch):
    """Compute capability 8.0 or later (what the kernels are compiled and checked for), CUDA
    rather than ROCm builds of torch, and the triton package importable; asked once per device."""
    capability = {}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(major=capability[index][0], minor=capability[index][1]))
    SNF.triton_device.cache_clear()
    try:
        capability.update({0: (9, 0), 1: (8, 0), 2: (7, 5), 3: (8, 6)})
        assert [SNF.triton_device(i) for i in range(4)] == [True, True, False, True]
        capability[0] = (7, 0)
        assert SNF.triton_device(0)  # (cached: asked once per device)
        SNF.triton_device.cache_clear()
        monkeypatch.setattr(torch.version, "hip", "6.2", raising=False)
        assert not SNF.triton_device(1)
        monkeypatch.setattr(torch.version, "hip", None, raising=False)
        SNF.triton_device.cache_clear()
        monkeypatch.setattr(SNF, "_HAS_TRITON", False)  # (no triton package)
        assert not SNF.triton_device(1)
    finally:
        SNF.triton_device.cache_clear()
    cpu = torch.randn(2, 4, 3)
    assert not SNF.triton_by_default(cpu) and SNF.select_implementation(cpu) != "triton"


FORWARD = ["triton:row_moments_kernel", "triton:pool_kernel", "triton:mix_apply_kernel"]
BACKWARD = ["triton:row_grad_sums_kernel", "triton:mix_grad_kernel", "triton:grad_rows_kernel"]


@kernels
def test_a_training_step_is_six_launches_and_nothing_else():
    """Three kernels forward, three backward (the logits' gradients in dx's first program),
    whatever the statistics; no PyTorch operation runs on the device but the layer's batch counter
    (the PyTorch-operation path dispatches ~93). Without an input gradient the logits' gradients
    take a kernel of their own."""
    from bench.launches import DeviceOps, counting_triton, step_ops
    for stats, devices, groups in CASES:
        ops = step_ops(_layer(stats, devices, groups), _input(torch.float32, False), train=True)
        counter = ["add_"] if "bn" in stats else []  # num_batches_tracked += 1
        assert ops == counter + FORWARD + BACKWARD, (stats, ops)
    layer, x = _layer(("in", "ln", "bn"), 1, None), _input(torch.float32, False)
    mode, grad = DeviceOps(), torch.ones_like(x)
    with mode, counting_triton(mode.ops):
        torch.autograd.grad(layer(x), list(layer.parameters()), grad)  # (x needs no gradient)
    assert mode.ops == ["add_"] + FORWARD + BACKWARD[:2] + ["triton:logit_grad_kernel"], mode.ops
    eval_ops = step_ops(_layer(("in", "ln", "bn"), 1, None), _input(torch.float32, True), train=False)
    assert eval_ops == FORWARD  # (LN's moments need the pool)
    assert step_ops(_layer(("in", "bn"), 1, None), _input(torch.float32, False), train=False) == \
        ["triton:row_moments_kernel", "triton:mix_apply_kernel"]
    torch_path = _layer(("in", "ln", "bn"), 1, None).to("meta")  # (meta: the branches a GPU takes)
    torch_path.implementation = "torch"
    torch_ops = step_ops(torch_path, _input(torch.float32, False).to("meta"), train=True)
    assert len(torch_ops) > 50 and not any(op.startswith("triton:") for op in torch_ops)


@kernels
def test_triton_where_it_cannot_run_is_a_clear_error(monkeypatch):
    layer = _layer(("in", "ln", "bn"), 1, None).double()
    with pytest.raises(ValueError, match="implementation='triton' runs float32/float16/bfloat16 CUDA"):
        layer(_input(torch.float64, False))
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA tensors; got a torch.float32 tensor on cpu"):
            _layer(("in", "ln", "bn"), 1, None)(_input(torch.float32, False))


@pytest.mark.skipif(ON_GPU or INTERPRETED, reason="on a GPU (or in the interpreter already) the tests above run here")
def test_the_kernels_in_triton_s_interpreter():
    """Every test above, in a fresh process with Triton's interpreter on (CPU tensors)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
