"""Eval mode without autograd against float64 maths and against the layer's autograd path,
including the cases where the one-pass moments must give way to two passes, and that no change
of the layer's state (optimizer steps, loads, in-place writes through ``.data``) is missed."""
import copy

import pytest
import torch

import sn
from sn import moments as SNM
from sn_reference import reference_switch_norm


# every test here runs on both CPU implementations (see conftest.py)
pytestmark = pytest.mark.usefixtures("implementation")

STATS = [("in", "ln", "bn"), ("in", "bn"), ("ln", "bn"), ("bn",), ("in",), ("in", "ln"), ("ln", "gn"),
         ("in", "ln", "bn", "gn"), ("gn", "bn")]


def _layer(stats, c=8, affine=True, seed=0, cls=sn.SwitchNorm2d):
    g = torch.Generator().manual_seed(seed)
    layer = cls(c, stats=stats, affine=affine, num_groups=4 if "gn" in stats else None)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(len(stats), generator=g) * 2)
        layer.var_weight.copy_(torch.randn(len(stats), generator=g) * 2)
        if affine:
            layer.weight.copy_(torch.randn(c, generator=g))  # negative scales too
            layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g) * 3)
        layer.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.1)
    return layer.eval()


def _reference(layer, x):
    return reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias,
                                 eps=layer.eps, num_groups=layer.num_groups or 1, bn_mean=layer.running_mean,
                                 bn_var=layer.running_var)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stats", STATS)
def test_eval_no_grad_matches_float64_reference_and_autograd_path(stats, affine):
    layer = _layer(stats, affine=affine)
    x = torch.randn(5, 8, 6, 7) * 3 + 2
    with torch.no_grad():
        out = layer(x)
    ref = _reference(layer, x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    # with autograd on, eval goes through the fused autograd function: the same numbers
    torch.testing.assert_close(out, layer(x.requires_grad_()).detach(), atol=2e-6, rtol=1e-6)
    xd = x.detach().double()
    with torch.inference_mode():
        out64 = copy.deepcopy(layer).double()(xd)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("offset", [1e2, 1e4])
@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("ln", "gn"), ("in", "ln", "bn", "gn")])
def test_large_offsets_take_two_passes_and_stay_within_float32_accuracy(stats, offset):
    layer = _layer(stats, seed=1)
    x = torch.randn(4, 8, 6, 6) + offset
    x[1, 2:5] -= offset  # rows with and without the offset in one batch
    rows = x.reshape(32, -1)
    first, second, one_pass = SNM.row_sums(rows.unsqueeze(0))
    assert not one_pass  # mean^2 > 16 var on some rows: two passes
    r64 = rows.double()
    torch.testing.assert_close(first[0].double() / 36, r64.mean(1), atol=0, rtol=1e-6)
    torch.testing.assert_close(second[0].double() / 36, r64.var(1, unbiased=False), atol=0, rtol=1e-4)
    _, _, one_pass = SNM.row_sums(torch.randn(1, 32, 36))
    assert one_pass
    with torch.no_grad():  # running statistics of data like this batch, as a trained layer has
        layer.running_mean.copy_(x.mean((0, 2, 3)))
        layer.running_var.copy_(x.var((0, 2, 3)))
        out = layer(x)
    ref = _reference(layer, x)
    tol = 4 * offset * 2.0 ** -23 * float(layer.weight.detach().abs().max()) + 2e-5
    err = (out.double() - ref).abs().max().item()
    assert torch.isfinite(out).all() and err < tol, f"max error {err} >= {tol}"


def test_one_pass_sums_give_float64_moments_where_they_are_used():
    torch.manual_seed(2)
    rows = torch.randn(64, 50) * torch.rand(64, 1) * 5 + torch.randn(64, 1) * 3  # mean^2 up to ~16 var
    rows = rows[(rows.mean(1) ** 2 <= 16 * rows.var(1, unbiased=False))]  # keep the rows the fast path takes
    first, second, one_pass = SNM.row_sums(rows.unsqueeze(0))
    assert one_pass
    r64, l = rows.double(), rows.shape[1]
    torch.testing.assert_close(first[0].double() / l, r64.mean(1), atol=1e-6, rtol=1e-6)
    var = (second[0].double() - first[0].double() ** 2 / l) / l  # as the path uses them
    torch.testing.assert_close(var, r64.var(1, unbiased=False), atol=0, rtol=2e-5)


@pytest.mark.parametrize("shape", [(1, 8, 5, 5), (6, 8, 1, 1), (1, 8, 1, 1), (3, 8), (2, 8, 3, 4, 5)])
@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("in", "ln", "bn", "gn")])
def test_batch_size_one_1x1_features_and_3d_are_finite_and_correct(shape, stats):
    cls = {2: sn.SwitchNorm1d, 4: sn.SwitchNorm2d, 5: sn.SwitchNorm3d}[len(shape)]
    layer = _layer(stats, seed=3, cls=cls)
    x = torch.randn(shape) * 2 + 1
    with torch.no_grad():
        out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), _reference(layer, x), atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_their_dtype_and_compute_in_float32(dtype):
    layer = _layer(("in", "ln", "bn"), seed=4)
    x = (torch.randn(4, 8, 5, 5) * 4 + 10).to(dtype)
    with torch.no_grad():
        out = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_autocast = layer(x.float())
    assert out.dtype == dtype
    ref = _reference(layer, x.float())
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(out_autocast.double(), ref, atol=1e-4, rtol=1e-4)


def test_channels_last_and_non_contiguous_inputs():
    layer = _layer(("in", "ln", "bn"), seed=5)
    x = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        ref = layer(x)
        out = layer(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref)
        assert out.is_contiguous(memory_format=torch.channels_last)  # as nn.BatchNorm2d keeps it
        torch.testing.assert_close(layer(x.transpose(2, 3).contiguous().transpose(2, 3)), ref)
        wide = torch.randn(4, 8, 6, 12)
        torch.testing.assert_close(layer(wide[:, :, :, ::2]), layer(wide[:, :, :, ::2].contiguous()))  # strided
        torch.testing.assert_close(layer(wide[:, :, 1:5]), layer(wide[:, :, 1:5].contiguous()))  # a viewable slice


def test_eval_follows_every_change_of_the_layer():
    layer = _layer(("in", "ln", "bn", "gn"), seed=6)
    x = torch.randn(4, 8, 5, 5)

    def check():
        with torch.no_grad():
            out = layer(x)
        torch.testing.assert_close(out.double(), _reference(layer, x), atol=2e-5, rtol=1e-5)

    check()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)  # an optimizer step changes logits and affine
    layer.train()
    layer(torch.randn(4, 8, 5, 5) * 3).square().mean().backward()  # also moves the running stats
    opt.step()
    layer.eval()
    check()
    state = _layer(("in", "ln", "bn", "gn"), seed=7).state_dict()
    layer.load_state_dict(state)
    check()
    with torch.no_grad():
        layer.var_weight.data = torch.tensor([5.0, -5.0, 0.0, 1.0])  # a new tensor, not an in-place change
    check()
    sn.update_stats(layer, [torch.randn(4, 8, 5, 5) * 2 + 1 for _ in range(3)], num_batches=3)
    check()
    with torch.no_grad():  # another batch size
        torch.testing.assert_close(layer(x[:3]).double(), _reference(layer, x[:3]), atol=2e-5, rtol=1e-5)


WRITES = {
    "weight.data.mul_": lambda m: m.weight.data.mul_(2),
    "bias.data.add_": lambda m: m.bias.data.add_(1),
    "running_mean.data.add_": lambda m: m.running_mean.data.add_(3),
    "running_var.data.mul_": lambda m: m.running_var.data.mul_(4),
    "mean_weight.data.copy_": lambda m: m.mean_weight.data.copy_(torch.tensor([3.0, -2.0, 0.5])),
    "var_weight copy_ under no_grad": lambda m: m.var_weight.copy_(torch.tensor([-1.0, 2.0, 0.0])),
    "running_var.fill_": lambda m: m.running_var.fill_(0.25),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("write", list(WRITES))
def test_in_place_writes_are_never_served_stale(write, dtype):
    """Writes through ``.data`` bump no version counter; eval must see them all the same (also
    for float64 input into a float32 layer, whose parameters are converted per call)."""
    layer = _layer(("in", "ln", "bn"), seed=10)
    x = (torch.randn(4, 8, 5, 5) * 2 + 1).to(dtype)
    with torch.no_grad():
        layer(x), layer(x)  # whatever a first call may keep
        WRITES[write](layer)
        out = layer(x)
    torch.testing.assert_close(out.double(), _reference(layer, x), atol=2e-5, rtol=1e-5)


def test_training_mode_and_batch_statistics_do_not_take_the_inference_path():
    layer = _layer(("in", "ln", "bn"), seed=8).train()
    x = torch.randn(4, 8, 5, 5) * 2 + 1
    before = layer.running_mean.clone()
    with torch.no_grad():
        out = layer(x)
    assert not torch.equal(layer.running_mean, before)  # training under no_grad still tracks
    ref = reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    untracked = sn.SwitchNorm2d(8, track_running_stats=False).eval()
    with torch.no_grad():
        out = untracked(x)
    ref = reference_switch_norm(x, untracked.mean_weight, untracked.var_weight, untracked.stats, untracked.weight,
                                untracked.bias)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)


def test_constants_cached_under_inference_mode_serve_no_grad_calls_and_training_goes_on():
    """Lightning validates under inference_mode; the cache it fills must not break later calls."""
    layer = _layer(("in", "ln", "bn"), seed=9)
    x = torch.randn(4, 8, 5, 5)
    with torch.inference_mode():
        first = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), first.clone())
    layer.train()
    layer(x).square().mean().backward()  # a training step changes the running statistics
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), _reference(layer, x), atol=2e-5, rtol=1e-5)
