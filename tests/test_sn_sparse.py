"""Sparse SN: sparsestmax against brute force on its definition, its gradients, the layers on
every CPU implementation against the float64 reference, the radius schedule ending one-hot,
and a trained SSN model frozen into plain layers."""
import io
import math
import warnings

import pytest
import torch
from torch import nn

import sn
from sn.selection import as_logits, max_radius, radius_at, sparsestmax

from sn_reference import reference_switch_norm

STATS = ("in", "ln", "bn")


def _simplex_samples(k, count, generator):
    """Points of the simplex: its interior (Dirichlet) and every face (zeros off a random support)."""
    points = [torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample((count,))]
    for _ in range(2 * k):
        support = torch.rand(k, generator=generator) < 0.5
        if support.sum() == 0:
            continue
        d = torch.distributions.Dirichlet(torch.ones(int(support.sum()), dtype=torch.float64)).sample((count // 4,))
        face = torch.zeros(count // 4, k, dtype=torch.float64)
        face[:, support] = d
        points.append(face)
    points.append(torch.eye(k, dtype=torch.float64))
    return torch.cat(points)


def _sparsemax(z):
    """Sparsemax by sorting (Martins & Astudillo 2016), independent of sn.selection."""
    zs, _ = torch.sort(z, descending=True)
    k = torch.arange(1, z.numel() + 1, dtype=z.dtype)
    cumsum = zs.cumsum(0)
    support = 1 + k * zs > cumsum
    kz = int(support.nonzero().max()) + 1
    tau = (cumsum[kz - 1] - 1) / kz
    return (z - tau).clamp_min(0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_sparsestmax_is_the_closest_feasible_point(k):
    # brute force on the definition: no sampled point of the simplex at least r from its centre
    # is closer to z than sparsestmax(z; r), which is itself such a point
    g = torch.Generator().manual_seed(k)
    torch.manual_seed(k)
    samples = _simplex_samples(k, 20000, g)
    u = 1.0 / k
    for trial in range(60):
        z = torch.randn(k, generator=g, dtype=torch.float64) * (0.1 + 2 * torch.rand(1, generator=g).item())
        r = float(torch.rand(1, generator=g)) * max_radius(k)
        p = sparsestmax(z, r)
        assert p.dtype == torch.float64
        assert (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12, (z, r, p)
        assert float((p - u).norm()) >= r - 1e-9, (z, r, p)
        feasible = samples[(samples - u).norm(dim=1) >= r]
        best_sampled = float(((feasible - z) ** 2).sum(1).min())
        assert float(((p - z) ** 2).sum()) <= best_sampled + 1e-12, (z, r, p)


def test_sparsestmax_at_radius_zero_is_sparsemax_and_at_the_largest_radius_one_hot():
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 4):
        for _ in range(30):
            z = torch.randn(k, generator=g, dtype=torch.float64) * 2
            torch.testing.assert_close(sparsestmax(z, 0.0), _sparsemax(z), rtol=0, atol=1e-12)
            hot = sparsestmax(z, max_radius(k))
            assert hot.tolist() == torch.nn.functional.one_hot(z.argmax(), k).double().tolist()
            # beyond the largest radius: the same (clamped)
            assert sparsestmax(z, 5.0).tolist() == hot.tolist()
    # batched logits: each row on its own
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, 0.4), torch.stack([sparsestmax(row, 0.4) for row in z]))


def test_sparsestmax_gradients():
    g = torch.Generator().manual_seed(1)
    for k in (3, 4):
        for r in (0.0, 0.25, 0.5, 0.7):
            z = torch.randn(k, generator=g, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradcheck(lambda t: sparsestmax(t, r), (z,))
            assert torch.autograd.gradgradcheck(lambda t: sparsestmax(t, r), (z,))
    # logits whose weights are uniform (the layers' initial logits): finite gradients
    z = torch.ones(3, dtype=torch.float64, requires_grad=True)
    for r in (0.0, 0.3):
        (sparsestmax(z, r) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
        assert torch.isfinite(z.grad).all()
        z.grad = None


def test_as_logits_round_trip_and_gradient():
    p = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64, requires_grad=True)
    logits = as_logits(p)
    assert logits[0].item() == -math.inf
    torch.testing.assert_close(torch.softmax(logits, 0), p.detach(), rtol=0, atol=1e-15)
    c = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    (torch.softmax(logits, 0) * c).sum().backward()
    # the weights' own gradient c, centred on the support, and zero off it
    assert p.grad.tolist() == pytest.approx([0.0, -1.0 - (0.25 * -1 + 0.75 * 2), 2.0 - (0.25 * -1 + 0.75 * 2)])


def _sparse_layer(impl=None, stats=STATS, c=6):
    torch.manual_seed(3)
    layer = sn.SwitchNorm2d(c, stats=stats, selector="sparsestmax", implementation=impl).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.2, 1.0, 0.5, 0.1][:len(stats)]))
        layer.var_weight.copy_(torch.tensor([1.2, 0.1, 1.0, 0.4][:len(stats)]))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    return layer


@pytest.mark.parametrize("impl", ["native", "torch", "composite"])
@pytest.mark.parametrize("radius", [0.0, 0.3, 0.7, max_radius(3)])
def test_sparse_layer_matches_float64_reference_on_every_path(impl, radius):
    layer = _sparse_layer(impl)
    sn.set_radius(layer, radius)
    x = (torch.randn(8, 6, 3, 3, dtype=torch.float64) * 5 + 100).requires_grad_()
    wm = sparsestmax(layer.mean_weight.detach(), layer.radius)
    wv = sparsestmax(layer.var_weight.detach(), layer.radius)
    out = layer(x)
    ref = reference_switch_norm(x, None, None, STATS, layer.weight, layer.bias, weights=(wm, wv))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    assert [layer.importance()["mean"][op] for op in STATS] == pytest.approx(wm.tolist(), abs=1e-7)
    if radius >= max_radius(3):
        assert sorted(wm.tolist()) == [0.0, 0.0, 1.0] and sorted(wv.tolist()) == [0.0, 0.0, 1.0]
    # gradients against autograd through the reference's operations with sparsestmax weights
    g_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, layer.mean_weight, layer.var_weight, layer.weight], g_out)
    with sn.implementation("composite"):
        comp = sn.SwitchNorm2d(6, selector="sparsestmax", implementation="composite").double()
        comp.load_state_dict(layer.state_dict())
        x2 = x.detach().clone().requires_grad_()
        out2 = comp(x2)
        want = torch.autograd.grad(out2, [x2, comp.mean_weight, comp.var_weight, comp.weight], g_out)
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, exp, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("impl", ["native", "torch", "composite"])
def test_sparse_functional_gradcheck(impl):
    torch.manual_seed(4)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    ml = torch.tensor([0.3, 0.9, 0.0], dtype=torch.float64, requires_grad=True)
    vl = torch.tensor([0.8, 0.2, 0.5], dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def f(x, ml, vl, w, b):
        return sn.switch_norm(x, ml, vl, None, None, w, b, training=True, implementation=impl,
                              selector="sparsestmax", radius=0.5)

    assert torch.autograd.gradcheck(f, (x, ml, vl, w, b))
    assert torch.autograd.gradgradcheck(f, (x, ml, vl, w, b))


def test_sparse_options_are_checked():
    x = torch.randn(2, 3, 4, 4)
    ml, vl = torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError, match="selector must be one of"):
        sn.SwitchNorm2d(3, selector="sparsemax")
    with pytest.raises(ValueError, match="needs a radius"):
        sn.switch_norm(x, ml, vl, training=True, selector="sparsestmax")
    with pytest.raises(ValueError, match="radius must be in"):
        sn.switch_norm(x, ml, vl, training=True, selector="sparsestmax", radius=0.9)
    with pytest.raises(ValueError, match="radius must be in"):
        sn.switch_norm(x, ml, vl, training=True, selector="sparsestmax", radius=-0.1)
    with pytest.raises(ValueError, match="applies to 'sparsestmax'"):
        sn.switch_norm(x, ml, vl, training=True, radius=0.1)
    with pytest.raises(ValueError, match="either radius= or progress="):
        sn.set_radius(nn.Sequential(), 0.1, progress=0.5)
    with pytest.raises(ValueError, match="progress must be in"):
        sn.set_radius(nn.Sequential(), progress=1.5)
    with pytest.raises(ValueError, match="start < end"):
        radius_at(0.5, 3, start=0.9, end=0.5)


def test_radius_schedule_and_set_radius():
    model = nn.Sequential(sn.make_norm("ssn", 4), sn.make_norm("ssn-inln", 4), sn.make_norm("sn", 4))
    assert sn.set_radius(model, progress=0.0) == 2
    assert model[0].radius.item() == 0.0
    sn.set_radius(model, progress=0.4)  # halfway to the end (0.8) of the default schedule
    assert model[0].radius.item() == pytest.approx(0.5 * max_radius(3))
    assert model[1].radius.item() == pytest.approx(0.5 * max_radius(2))
    sn.set_radius(model, progress=0.9)
    assert model[0].radius.item() == pytest.approx(max_radius(3))
    sn.set_radius(model, 10.0)  # clamped to each layer's largest radius
    assert model[1].radius.item() == pytest.approx(max_radius(2))
    # the radius is saved and restored with the model
    state = model.state_dict()
    assert "0.radius" in state and "2.radius" not in state
    other = nn.Sequential(sn.make_norm("ssn", 4), sn.make_norm("ssn-inln", 4), sn.make_norm("sn", 4))
    other.load_state_dict(state)
    assert other[0].radius.item() == pytest.approx(max_radius(3))
    assert "selector='sparsestmax'" in repr(model[0])


def _net(norm):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), sn.make_norm(norm, 8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), sn.make_norm(norm, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_training_with_the_schedule_ends_one_hot_and_freezes_into_plain_layers():
    model = _net("ssn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    steps = 40
    start_logits = model[1].mean_weight.detach().clone()
    for step in range(steps):
        sn.set_radius(model, progress=step / steps)
        x = torch.randn(8, 3, 6, 6, generator=g)
        y = (x[:, 0].mean((1, 2)) > 0).long()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model[1].mean_weight.detach(), start_logits)  # the logits learned
    for layer in (model[1], model[4]):
        for weights in layer.importance().values():
            assert sorted(weights.values()) == [0.0, 0.0, 1.0]  # exactly one-hot
    model.eval()
    x = torch.randn(4, 3, 6, 6, generator=g)
    with torch.no_grad():
        want = model(x)
    plan = {entry["layer"]: entry for entry in sn.freeze_plan(model)}
    for name, layer in sn.switch_norm_layers(model):
        chosen = {stat: max(w, key=w.get) for stat, w in layer.importance().items()}
        # one op for both means and variances: a plain layer; else (SSN selects them separately) SN stays
        assert (plan[name]["action"] == "frozen") == (chosen["mean"] == chosen["var"]), plan[name]
    frozen = sn.freeze(model)
    assert len(sn.switch_norm_layers(frozen)) == sum(entry["action"] == "kept" for entry in plan.values())
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), want, rtol=1e-5, atol=1e-5)


def test_sparse_layer_traces_and_exports():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _net("ssn").eval()
    sn.set_radius(model, 0.3)
    with torch.no_grad():  # one layer's weights sparse but mixed, the other's different
        model[1].mean_weight.copy_(torch.tensor([0.1, 0.9, 0.4]))
        model[4].var_weight.copy_(torch.tensor([1.5, 0.2, 0.3]))
        for layer in (model[1], model[4]):  # (as trained; see docs/library.md on fresh layers and the
            layer.weight.uniform_(0.5, 1.5)  # legacy exporter)
            layer.bias.uniform_(-1, 1)
    x, x_new = torch.randn(2, 3, 6, 6), torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        want = model(x_new)
        with warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x_new), want, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    program = torch.onnx.export(model, (x,), input_names=["x"], dynamic_shapes=({0: torch.export.Dim("n")},),
                                dynamo=True)
    for data in (buffer.getvalue(), program.model_proto.SerializeToString()):
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"x": x_new.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=2e-5, atol=2e-5)


def test_sparse_layer_under_vmap_of_stacked_models():
    models = [_net("ssn").train() for _ in range(2)]
    for i, m in enumerate(models):
        sn.set_radius(m, 0.2 + 0.3 * i)
        with torch.no_grad():
            m[1].mean_weight.add_(torch.randn(3) * (i + 1))
    params, buffers = torch.func.stack_module_state(models)
    base = _net("ssn").to("meta")
    x = torch.randn(2, 4, 3, 6, 6)

    def run(p, b, xi):
        return torch.func.functional_call(base, (p, b), (xi,))

    out = torch.func.vmap(run)(params, buffers, x)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x[i]), rtol=1e-5, atol=1e-5)


def test_sparse_layer_under_torch_compile():
    layer = _sparse_layer().float()
    sn.set_radius(layer, 0.4)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
