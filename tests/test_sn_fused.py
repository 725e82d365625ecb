"""The fused path (custom autograd function around autograd's backward of the (N, C) mixing,
one-pass moments) and the C kernels against the composite form and float64 maths."""
import pytest
import torch

import sn
from sn import moments as SNM
from sn_paths import composite_rows, rows
from sn_reference import reference_switch_norm


# every test here runs on both CPU implementations (see conftest.py)
pytestmark = pytest.mark.usefixtures("implementation")

CASES = [
    (("in", "ln", "bn"), 1, None),
    (("in", "ln", "bn"), 3, None),
    (("in", "ln"), 1, None),
    (("ln", "gn"), 1, 2),
    (("in", "ln", "bn", "gn"), 2, 4),
    (("bn",), 1, None),
]


def _inputs(stats, dtype, seed=0, shape=(6, 8, 5)):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).requires_grad_()
    k = len(stats)
    params = [torch.randn(k, generator=g, dtype=dtype), torch.randn(k, generator=g, dtype=dtype),
              torch.rand(shape[1], generator=g, dtype=dtype) + 0.5, torch.randn(shape[1], generator=g, dtype=dtype)]
    return x, [p.requires_grad_() for p in params]


@pytest.mark.parametrize("stats,devices,groups,running",
                         [c + (False,) for c in CASES] + [c + (True,) for c in CASES if "bn" in c[0]])
def test_fused_matches_autograd_reference_outputs_and_gradients(stats, devices, groups, running):
    x, params = _inputs(stats, torch.float64)
    kw = dict(eps=1e-5, num_groups=groups or 1, devices=devices)
    if running:
        kw.update(bn_mean=torch.randn(8, dtype=torch.float64), bn_var=torch.rand(8, dtype=torch.float64) + 0.5)
    out_f, bn_f = rows(x, *params, stats, **kw)
    out_r, bn_r = composite_rows(x, *params, stats, **kw)
    torch.testing.assert_close(out_f.reshape(out_r.shape), out_r, atol=1e-12, rtol=0)
    if bn_r is not None:
        torch.testing.assert_close(bn_f[0], bn_r[0]), torch.testing.assert_close(bn_f[1], bn_r[1])
    grad = torch.randn_like(out_r)
    g_f = torch.autograd.grad(out_f.reshape(out_r.shape), [x] + params, grad)
    g_r = torch.autograd.grad(out_r, [x] + params, grad)
    for name, a, b in zip(["x", "mean_logits", "var_logits", "weight", "bias"], g_f, g_r):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("order", ["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("stats,devices,groups", CASES)
def test_fused_gradcheck_and_double_backward(stats, devices, groups, order):
    """Double backward: under create_graph=True the backward returns the composite form's
    gradients as a graph."""
    x, params = _inputs(stats, torch.float64, seed=1, shape=(6, 4, 3 if order == "gradcheck" else 2))

    def f(x, *p):
        return rows(x, *p, stats, num_groups=groups or 1, devices=devices)[0]

    check = torch.autograd.gradcheck if order == "gradcheck" else torch.autograd.gradgradcheck
    assert check(f, [x] + params, eps=1e-6, atol=1e-6 if order == "gradcheck" else 1e-5)


def test_partial_requires_grad_and_affine_none():
    x, (ml, vl, w, b) = _inputs(("in", "ln", "bn"), torch.float64)
    ml.requires_grad_(False)
    out, _ = rows(x, ml, vl, None, None, ("in", "ln", "bn"))
    ref, _ = composite_rows(x, ml, vl, None, None, ("in", "ln", "bn"))
    g = torch.randn_like(ref)
    gx, gv = torch.autograd.grad(out.reshape(ref.shape), [x, vl], g)
    rx, rv = torch.autograd.grad(ref, [x, vl], g)
    torch.testing.assert_close(gx, rx), torch.testing.assert_close(gv, rv)


@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (3.0, 1.0), (5.0, 1.0), (1e4, 1.0), (1.0, 0.0)])
def test_one_pass_and_two_pass_moments_are_accurate(offset, spread):
    """Rows near and beyond the one-pass threshold (mean^2 = 16 var), large offsets, constant rows."""
    torch.manual_seed(0)
    x = (torch.randn(4, 6, 49) * spread + offset).float()
    first, second, raw = SNM.row_sums(x)
    if offset == 0.0 or offset >= 5.0 or spread == 0.0:  # clearly on one side of mean^2 = 16 var
        assert raw == (offset == 0.0)
    mean = first / 49
    var = (second - first * first / 49) / 49 if raw else second / 49
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean(2), atol=1e-6 * (1 + offset), rtol=0)
    ref_var = x64.var(2, unbiased=False)
    assert ((var.double() - ref_var).abs() <= 1e-5 * ref_var + 1e-6 * (1 + offset) ** 2 * 2.0 ** -10).all()
    assert (var >= 0).all()


def test_fused_layer_float32_close_to_float64_reference():
    torch.manual_seed(3)
    layer = sn.SwitchNorm2d(16, devices=2)
    with torch.no_grad():
        layer.mean_weight.normal_(), layer.var_weight.normal_()
    x = torch.randn(8, 16, 7, 7) * 3 + 2
    ref = reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias, devices=2)
    torch.testing.assert_close(layer(x).double(), ref, atol=2e-5, rtol=0)


def test_layer_double_backward_equals_the_composite_form():
    """A gradient penalty through the default layer, against the same in plain operations."""
    torch.manual_seed(0)
    layer = sn.SwitchNorm2d(3).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    penalties = []
    for name in ("auto", "composite"):
        with sn.implementation(name):
            (g,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        penalties.append(torch.autograd.grad(g.square().sum(), [x, layer.mean_weight, layer.weight]))
    for a, b in zip(*penalties):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_saved_tensors_are_the_input_and_small_statistics():
    layer = sn.SwitchNorm2d(8)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved = {}

    def pack(t):
        saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    # the input (one copy) plus O(N*C + C) statistics, nothing else of the input's size
    assert sum(saved.values()) <= x.numel() * 4 + 64 * 4 * 8


def test_output_can_be_written_in_place_like_batchnorms():
    """torchvision's ResNets put ReLU(inplace=True) after every norm: the training output must be a
    tensor autograd lets one modify in place, with the same gradients as out of place."""
    torch.manual_seed(5)
    layer = sn.SwitchNorm2d(6)
    x0 = torch.randn(4, 6, 5, 5) * 2 + 1
    grads = []
    for inplace in (False, True):
        x = x0.clone().requires_grad_()
        torch.nn.ReLU(inplace=inplace)(layer(x)).square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])
