"""SwitchNorm layers against float64 references and torch's own norm layers."""
import pytest
import torch
from torch import nn

import sn
from sn_reference import direct_moments, one_hot_logits, reference_switch_norm

STAT_SETS = [("in", "ln", "bn"), ("in", "ln"), ("ln", "gn"), ("in", "ln", "bn", "gn"), ("bn",)]


def randomize(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(len(layer.stats), generator=g) * 2)
        layer.var_weight.copy_(torch.randn(len(layer.stats), generator=g) * 2)
        if layer.affine:
            layer.weight.copy_(torch.rand(layer.num_features, generator=g) + 0.5)
            layer.bias.copy_(torch.randn(layer.num_features, generator=g))
    return layer


def set_one_hot(layer, op):
    with torch.no_grad():
        layer.mean_weight.copy_(one_hot_logits(layer.stats, op))
        layer.var_weight.copy_(one_hot_logits(layer.stats, op))
    return layer


def check_against_reference(layer, x, atol, devices=1):
    out = layer(x)
    ref = reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias,
                                layer.eps, layer.num_groups or 1, devices)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("stats", STAT_SETS)
@pytest.mark.parametrize("cls,shape", [(sn.SwitchNorm1d, (6, 8)), (sn.SwitchNorm1d, (6, 8, 5)),
                                       (sn.SwitchNorm2d, (6, 8, 5, 4)), (sn.SwitchNorm3d, (6, 8, 3, 2, 4))])
def test_random_logits_match_float64_reference(cls, shape, stats):
    torch.manual_seed(1)
    layer = randomize(cls(8, stats=stats, num_groups=4 if "gn" in stats else None))
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    check_against_reference(layer.double(), x, atol=1e-12)
    check_against_reference(layer.float(), x.float(), atol=2e-5)


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_per_device_statistics_match_reference(devices):
    torch.manual_seed(2)
    layer = randomize(sn.SwitchNorm2d(4, stats=("in", "ln", "bn", "gn"), num_groups=2, devices=devices)).double()
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    check_against_reference(layer, x, atol=1e-12, devices=devices)


def test_per_device_equals_each_chunk_separately():
    torch.manual_seed(3)
    layer = randomize(sn.SwitchNorm2d(5, devices=3)).double()
    single = randomize(sn.SwitchNorm2d(5, devices=1)).double()
    x = torch.randn(9, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    chunks = [single(c) for c in x.detach().requires_grad_().split(3)]
    torch.testing.assert_close(out, torch.cat(chunks), atol=1e-12, rtol=0)
    # gradients too: the chunks are independent
    grad_out = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad_out)
    xs = [c.detach().requires_grad_() for c in x.split(3)]
    gxs = [torch.autograd.grad(single(c), c, g)[0] for c, g in zip(xs, grad_out.split(3))]
    torch.testing.assert_close(gx, torch.cat(gxs), atol=1e-12, rtol=0)
    # running statistics: the average of the chunks' updates
    # (the layer ran once: running = 0.9 * init + 0.1 * average over chunks)
    chunk_means = torch.stack([c.mean((0, 2, 3)) for c in x.detach().split(3)])
    chunk_vars = torch.stack([c.var((0, 2, 3), unbiased=True) for c in x.detach().split(3)])
    torch.testing.assert_close(layer.running_mean, 0.1 * chunk_means.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * chunk_vars.mean(0), atol=1e-12, rtol=0)


def test_per_device_bn_equals_batchnorm_per_chunk():
    torch.manual_seed(4)
    bn = sn.PerDeviceBatchNorm(5, devices=2).double()
    ref = nn.BatchNorm2d(5).double()
    with torch.no_grad():
        for m in (bn, ref):
            m.weight.copy_(torch.linspace(0.5, 2, 5))
            m.bias.copy_(torch.linspace(-1, 1, 5))
    x = torch.randn(8, 5, 3, 3, dtype=torch.float64) + 3
    out = bn(x)
    parts, means, vars_ = [], [], []
    for c in x.split(4):
        r = nn.BatchNorm2d(5).double()
        r.load_state_dict(ref.state_dict())
        parts.append(r(c))
        means.append(r.running_mean)
        vars_.append(r.running_var)
    torch.testing.assert_close(out, torch.cat(parts), atol=1e-12, rtol=0)
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), atol=1e-12, rtol=0)


def _copy_affine(src, dst):
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_one_hot_bn_is_batchnorm2d_in_train_and_eval(momentum):
    torch.manual_seed(5)
    layer = set_one_hot(randomize(sn.SwitchNorm2d(6, momentum=momentum)), "bn").double()
    bn = nn.BatchNorm2d(6, momentum=momentum).double()
    _copy_affine(layer, bn)
    for step in range(4):
        x = torch.randn(5, 6, 4, 3, dtype=torch.float64) * (step + 1) + step
        torch.testing.assert_close(layer(x), bn(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_var, bn.running_var, atol=1e-12, rtol=0)
    assert int(layer.num_batches_tracked) == int(bn.num_batches_tracked) == 4
    layer.eval(), bn.eval()
    x = torch.randn(3, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), bn(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_hot_in_ln_gn_are_torch_layers(mode):
    torch.manual_seed(6)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64) * 3 - 1
    layer = randomize(sn.SwitchNorm2d(8, stats=("in", "ln", "bn", "gn"), num_groups=4)).double()
    layer.train(mode == "train")
    refs = {"in": nn.InstanceNorm2d(8, affine=True), "ln": nn.GroupNorm(1, 8), "gn": nn.GroupNorm(4, 8)}
    for op, ref in refs.items():
        ref = ref.double()
        _copy_affine(layer, ref)
        set_one_hot(layer, op)
        torch.testing.assert_close(layer(x), ref(x), atol=1e-10, rtol=0, msg=f"one-hot {op}")


def test_switchnorm1d_one_hot_ln_gn_match_torch():
    torch.manual_seed(7)
    layer = randomize(sn.SwitchNorm1d(16, num_groups=4)).double()
    assert layer.stats == ("ln", "gn")
    x = torch.randn(1, 16, dtype=torch.float64) * 5 + 2  # one sample, as in an LSTM controller
    ln = nn.LayerNorm(16).double()
    _copy_affine(layer, ln)
    torch.testing.assert_close(set_one_hot(layer, "ln")(x), ln(x), atol=1e-10, rtol=0)
    gn = nn.GroupNorm(4, 16).double()
    _copy_affine(layer, gn)
    torch.testing.assert_close(set_one_hot(layer, "gn")(x), gn(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("stats,devices", [(("in", "ln", "bn"), 1), (("in", "ln", "bn", "gn"), 2), (("ln", "gn"), 1)])
def test_gradcheck_input_affine_and_logits(stats, devices):
    torch.manual_seed(8)
    layer = randomize(sn.SwitchNorm2d(4, stats=stats, num_groups=2 if "gn" in stats else None, devices=devices)).double()
    x = torch.randn(4, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias, layer.mean_weight, layer.var_weight)

    def f(x, w, b, lm, lv):
        with torch.no_grad():
            layer.weight.copy_(w), layer.bias.copy_(b), layer.mean_weight.copy_(lm), layer.var_weight.copy_(lv)
        return torch.func.functional_call(layer, {"weight": w, "bias": b, "mean_weight": lm, "var_weight": lv}, (x,))

    inputs = (x,) + tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_eval_mode_with_running_stats():
    torch.manual_seed(9)
    layer = randomize(sn.SwitchNorm2d(3)).double()
    layer(torch.randn(4, 3, 3, 3, dtype=torch.float64))
    layer.eval()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)


def naive_published_form(x, stats_logits):
    """The printed Eqn. 5 (E[x^2] - mean^2) in float32, as the published implementation does."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    mean_in = x3.mean(2)
    var_in = (x3 * x3).mean(2) - mean_in ** 2
    temp = var_in + mean_in ** 2
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
    mean_bn = mean_in.mean(0, keepdim=True)
    var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
    w = torch.softmax(stats_logits, 0)
    mean = w[0] * mean_in + w[1] * mean_ln + w[2] * mean_bn
    var = w[0] * var_in + w[1] * var_ln + w[2] * var_bn
    return (x3 - mean[..., None]) / torch.sqrt(var[..., None] + 1e-5)


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
def test_large_offsets_stay_within_float32_accuracy(offset):
    torch.manual_seed(10)
    x = (torch.randn(4, 8, 6, 6) + offset).float()  # unit spread around a large mean
    layer = randomize(sn.SwitchNorm2d(8), seed=3)
    out = layer(x)
    ref = reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias)
    # float32 resolves the input to ulp(offset) = offset * 2**-23; the output (unit scale) can be
    # no more exact than a few such ulps
    tol = 4 * offset * 2.0 ** -23 * float(layer.weight.detach().max()) + 1e-5
    err = (out.double() - ref).abs().max().item()
    assert torch.isfinite(out).all()
    assert err < tol, f"offset {offset}: max error {err} >= {tol}"
    if offset >= 1e3:  # the published form fails here: shows this test can tell them apart
        naive = naive_published_form(x, torch.ones(3))
        naive_ref = reference_switch_norm(x, torch.ones(3), torch.ones(3), ("in", "ln", "bn")).reshape(naive.shape)
        naive_err = (naive.double() - naive_ref).abs().nan_to_num(float("inf")).max().item()
        assert naive_err > 10 * tol


@pytest.mark.parametrize("shape", [(1, 6, 4, 4), (5, 6, 1, 1), (1, 6, 1, 1)])
@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("in", "ln", "bn", "gn")])
def test_batch_size_one_and_1x1_are_finite_and_correct(shape, stats):
    torch.manual_seed(11)
    layer = randomize(sn.SwitchNorm2d(6, stats=stats, num_groups=3 if "gn" in stats else None))
    x = torch.randn(shape)
    out = layer(x)
    assert torch.isfinite(out).all()
    check_against_reference(layer, x, atol=1e-4)
    out.sum().backward()
    for p in layer.parameters():
        assert torch.isfinite(p.grad).all()
    assert torch.isfinite(layer.running_var).all() and torch.isfinite(layer.running_mean).all()
    layer.eval()
    assert torch.isfinite(layer(x)).all()


def test_biased_variance_single_pixel_instance_statistic_is_zero():
    m, v = direct_moments(torch.randn(3, 4, 1, dtype=torch.float64), "in")
    layer = set_one_hot(sn.SwitchNorm2d(4, stats=("in", "ln")), "in").double()
    x = torch.randn(3, 4, 1, 1, dtype=torch.float64)
    # with IN on a single pixel, x - mean = 0 exactly, so the output is the bias
    torch.testing.assert_close(layer(x), layer.bias.view(1, 4, 1, 1).expand(3, 4, 1, 1))
    assert (v == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_half_inputs_compute_in_float32(dtype):
    torch.manual_seed(12)
    layer = randomize(sn.SwitchNorm2d(8))
    x = torch.randn(4, 8, 6, 6) * 4 + 100
    conv = nn.Conv2d(8, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        out = layer(h)
    assert h.dtype == torch.bfloat16
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = reference_switch_norm(h.float(), layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias)
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.02)
    xh = x.to(dtype)
    out = layer(xh)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = reference_switch_norm(xh.float(), layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias)
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.02)


def test_channels_last_and_non_contiguous_inputs():
    torch.manual_seed(13)
    layer = randomize(sn.SwitchNorm2d(8))
    x = torch.randn(4, 8, 6, 5)
    expected = layer(x)
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), expected)
    xt = torch.randn(4, 8, 5, 6).transpose(2, 3)
    assert not xt.is_contiguous()
    torch.testing.assert_close(layer(xt), layer(xt.contiguous()))
    strided = torch.randn(8, 8, 6, 5)[::2]
    torch.testing.assert_close(layer(strided), layer(strided.contiguous()))


def test_track_running_stats_false_uses_batch_statistics_in_eval():
    torch.manual_seed(14)
    layer = randomize(sn.SwitchNorm2d(4, track_running_stats=False))
    x = torch.randn(4, 4, 3, 3)
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out)
    assert layer.running_mean is None


def test_state_dict_round_trip():
    torch.manual_seed(15)
    a = randomize(sn.SwitchNorm2d(6, devices=2))
    a(torch.randn(4, 6, 3, 3))
    b = sn.SwitchNorm2d(6)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)
    a.eval(), b.eval()
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(a(x), b(x))


def test_loads_published_layout():
    torch.manual_seed(16)
    c = 5
    published = {
        "weight": torch.rand(1, c, 1, 1) + 0.5,
        "bias": torch.randn(1, c, 1, 1),
        "mean_weight": torch.tensor([0.2, 1.5, -0.3]),
        "var_weight": torch.tensor([1.0, -1.0, 0.5]),
        "running_mean": torch.randn(1, c, 1),
        "running_var": torch.rand(1, c, 1) + 0.5,
    }
    layer = sn.SwitchNorm2d(c)
    layer.load_state_dict(published)  # strict: every key maps, no num_batches_tracked needed
    torch.testing.assert_close(layer.weight, published["weight"].flatten())
    torch.testing.assert_close(layer.running_var, published["running_var"].flatten())
    torch.testing.assert_close(layer.mean_weight, published["mean_weight"])
    layer.eval()
    x = torch.randn(2, c, 4, 4)
    ref = reference_switch_norm(x, published["mean_weight"], published["var_weight"], layer.stats,
                                published["weight"].flatten(), published["bias"].flatten(),
                                bn_mean=published["running_mean"].flatten(), bn_var=published["running_var"].flatten())
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-5, rtol=0)
    # a checkpoint without BN (2 logits) does not silently load into 3 statistics
    bad = dict(published, mean_weight=torch.zeros(2), var_weight=torch.zeros(2))
    with pytest.raises(RuntimeError, match="2 logits"):
        sn.SwitchNorm2d(c).load_state_dict(bad)
    sn.SwitchNorm2d(c, stats=("in", "ln")).load_state_dict(
        {k: v for k, v in bad.items() if not k.startswith("running")}, strict=False)


def test_defaults_and_repr():
    layer = sn.SwitchNorm2d(4)
    assert layer.stats == ("in", "ln", "bn")
    assert torch.equal(layer.mean_weight, torch.ones(3)) and torch.equal(layer.var_weight, torch.ones(3))
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))
    assert sn.SwitchNorm3d(4).stats == ("in", "ln", "bn")
    assert sn.SwitchNorm1d(4).stats == ("ln", "gn")
    assert "stats=('in', 'ln', 'bn')" in repr(layer)
    assert sn.SwitchNorm2d(4, affine=False).weight is None


def test_affine_false():
    torch.manual_seed(17)
    layer = randomize(sn.SwitchNorm2d(4, affine=False)).double()
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    ref = reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("build,x,match", [
    (lambda: sn.SwitchNorm2d(4), torch.randn(2, 4, 3), "4D"),
    (lambda: sn.SwitchNorm1d(4), torch.randn(2, 4, 3, 3), "2D"),
    (lambda: sn.SwitchNorm3d(4), torch.randn(2, 4, 3, 3), "5D"),
    (lambda: sn.SwitchNorm2d(4), torch.randn(2, 5, 3, 3), "expected 4 channels"),
    (lambda: sn.SwitchNorm2d(4, devices=3), torch.randn(4, 4, 3, 3), "batch size 4 .*devices=3"),
    (lambda: sn.SwitchNorm2d(4), torch.randn(0, 4, 3, 3), "batch size 0"),
    (lambda: sn.SwitchNorm2d(4), torch.randn(2, 4, 0, 3), "non-empty spatial.*\\(2, 4, 0, 3\\)"),
    (lambda: sn.SwitchNorm2d(4).eval(), torch.randn(2, 4, 3, 0), "non-empty spatial"),
])
def test_bad_inputs_raise_value_error(build, x, match):
    with pytest.raises(ValueError, match=match):
        build()(x)


def test_bad_input_types():
    with pytest.raises(TypeError, match="floating-point"):
        sn.SwitchNorm2d(4)(torch.ones(2, 4, 3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        sn.SwitchNorm2d(4)([[1.0]])


@pytest.mark.parametrize("kwargs,match", [
    ({"stats": ("in", "xn")}, "unknown statistics \\['xn'\\]"),
    ({"stats": ()}, "at least one"),
    ({"stats": ("in", "in")}, "twice"),
    ({"stats": ("ln", "gn"), "num_groups": 3}, "num_groups=3"),
    ({"num_groups": 2}, "'gn' is not in stats"),
    ({"devices": 0}, "devices"),
    ({"momentum": 1.5}, "momentum"),
    ({"eps": 0}, "eps"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sn.SwitchNorm2d(4, **kwargs)
    with pytest.raises(TypeError, match="string"):
        sn.SwitchNorm2d(4, stats="in")
    with pytest.raises(ValueError, match="num_features"):
        sn.SwitchNorm2d(0)
