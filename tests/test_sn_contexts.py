"""SN in the contexts other people's tools call it from: torch.jit.trace and script, ONNX export
(checked in onnxruntime), torch.export, torch.func transforms, double backward and memory
formats. Each runs on both CPU implementations (see conftest.py) against eager mode or
float64 maths; the one-line answer of sn.functional.select_implementation is checked too."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

import sn
from sn import functional as SNF

pytestmark = pytest.mark.usefixtures("implementation")


def _model(seed=0, track=True):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), sn.SwitchNorm2d(8, track_running_stats=track), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), sn.SwitchNorm2d(4, stats=("in", "ln", "bn", "gn"), num_groups=2,
                                                              track_running_stats=track))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, sn.SwitchNorm):
                layer.mean_weight.normal_(), layer.var_weight.normal_()
                layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
                if track:
                    layer.running_mean.normal_(), layer.running_var.uniform_(0.5, 2.0)
    return model


def _x(seed=1, n=4):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) * 2 + 1


@pytest.mark.parametrize("grad_mode", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_jit_trace_records_the_computation_not_the_example(grad_mode, train):
    model = _model().train(train)
    with torch.set_grad_enabled(grad_mode), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no warning about SN's code
        traced = torch.jit.trace(copy.deepcopy(model), _x(), check_trace=False)  # (checks rerun it)
    model(_x())  # (what tracing ran)
    other = _x(seed=2)  # another input: a trace that baked the example in would fail here
    expected, got = model(other), traced(other)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if train:  # the running statistics are updated by the traced module as by the eager one
        torch.testing.assert_close(traced.state_dict()["1.running_mean"], model[1].running_mean, atol=1e-6, rtol=1e-5)


def test_jit_script_refuses_at_scripting_time_pointing_to_export():
    with pytest.raises(RuntimeError, match="torch.jit.script.*torch.export"):
        torch.jit.script(_model())


def _onnxruntime(path, x):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pyproject dev extra)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("no_grad", [False, True])
def test_onnx_export_dynamo_runs_in_onnxruntime_like_pytorch(tmp_path, no_grad):
    model = _model().eval()
    with torch.set_grad_enabled(not no_grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (_x(),), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    program.save(str(tmp_path / "model.onnx"))
    for x in (_x(seed=3), _x(seed=4, n=7)):  # another input and batch size
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(_onnxruntime(tmp_path / "model.onnx", x), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("no_grad", [False, True])
def test_legacy_onnx_exporter_writes_a_file_that_computes_the_model(tmp_path, no_grad):
    model = _model().eval()
    path = tmp_path / "legacy.onnx"
    with torch.set_grad_enabled(not no_grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_x(),), str(path), dynamo=False)
    x = _x(seed=5)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(_onnxruntime(path, x), expected, atol=2e-5, rtol=1e-5)


def test_torch_export_matches_eager_in_eval():
    model = _model().eval()
    program = torch.export.export(model, (_x(),))
    x = _x(seed=6)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("switchnorm" in t for t in targets), targets  # plain operators, exportable anywhere


@pytest.mark.parametrize("train", [False, True])
def test_vmap_over_inputs_matches_a_loop(train):
    """Training with running statistics cannot be vmapped over inputs (as for BatchNorm: the
    buffers would get one update per sample); without them, and in eval, vmap is a loop."""
    model = _model(track=not train).train(train)
    xs = torch.stack([_x(seed=s) for s in range(3)])  # (3, N, C, H, W)
    expected = torch.stack([model(x) for x in xs])
    torch.testing.assert_close(vmap(model)(xs), expected, atol=1e-5, rtol=1e-5)


def test_vmap_over_inputs_in_training_with_running_statistics_is_a_clear_error():
    model = _model().train()
    with pytest.raises(RuntimeError, match="stack_module_state.*track_running_stats=False"):
        vmap(model)(torch.stack([_x(seed=s) for s in range(3)]))


@pytest.mark.parametrize("train", [False, True])
def test_vmap_over_stacked_models_matches_each_model(train):
    models = [_model(seed=s).train(train) for s in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.stack([_x(seed=s) for s in range(3)])
    out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))(params, buffers, xs)
    eager = [_model(seed=s).train(train) for s in range(3)]
    torch.testing.assert_close(out, torch.stack([m(x) for m, x in zip(eager, xs)]), atol=1e-5, rtol=1e-5)
    if train:  # every model's running statistics moved as its eager twin's
        torch.testing.assert_close(buffers["1.running_mean"], torch.stack([m[1].running_mean for m in eager]),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_func_grad_and_jacrev_match_autograd(train):
    model = _model(track=not train).train(train)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = _x()

    def loss(p, x):
        return functional_call(model, p, (x,)).square().mean()

    got = grad(loss)(params, x)
    expected = torch.autograd.grad(loss(dict(model.named_parameters()), x), list(model.parameters()))
    for (name, g), e in zip(got.items(), expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4, msg=name)
    x_small = _x(n=2)
    jac = jacrev(lambda x: model(x))(x_small)  # (N, C, H, W, N, 3, H, W)
    x_req = x_small.clone().requires_grad_()
    out = model(x_req)
    v = torch.randn_like(out)
    (vjp,) = torch.autograd.grad(out, x_req, v)
    torch.testing.assert_close(torch.einsum("abcd,abcdefgh->efgh", v, jac), vjp, atol=1e-4, rtol=1e-4)


def test_func_grad_in_training_with_running_statistics_is_a_clear_error():
    model = _model().train()
    with pytest.raises(RuntimeError, match="in training mode.*track_running_stats=False"):
        grad(lambda x: model(x).sum())(_x())


def test_gradgradcheck_on_the_default_layer():
    torch.manual_seed(0)
    layer = sn.SwitchNorm2d(3).double()
    with torch.no_grad():
        layer.mean_weight.normal_(), layer.var_weight.normal_()
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    params = [x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias]

    def f(x, mw, vw, w, b):
        return functional_call(layer, {"mean_weight": mw, "var_weight": vw, "weight": w, "bias": b}, (x,))

    assert torch.autograd.gradgradcheck(f, params, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_in_and_out_with_the_same_numbers(train):
    layer = _model()[1].train(train)
    twin = copy.deepcopy(layer)
    x = torch.randn(4, 8, 5, 5) * 3 + 1
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    out, ref = layer(xc), twin(x.clone().requires_grad_())
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert torch.isfinite(xc.grad).all()


CONTEXT_PATHS = [  # (name, how to enter it, the path SN takes in it)
    ("torch.jit.trace", lambda f: torch.jit.trace(f, _x(), check_trace=False), "composite"),
    ("torch.export", lambda f: torch.export.export(f, (_x(),)), "composite"),
    ("torch.func.vmap", lambda f: vmap(f)(_x().unsqueeze(0)), "composite"),
]


@pytest.mark.parametrize("name,enter,expected", CONTEXT_PATHS, ids=[c[0] for c in CONTEXT_PATHS])
def test_each_context_takes_the_composite_path(name, enter, expected, monkeypatch):
    seen = []
    original = SNF.select_implementation

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(SNF, "select_implementation", spy)
    enter(_model().eval())
    assert seen and set(seen) == {expected}, (name, seen)
    seen.clear()
    _model().eval()(_x())
    assert set(seen) <= {"native", "torch"}  # eager: the preferred fast path
