"""SN under torch.compile: one graph (no breaks), and the same outputs, gradients and running
statistics as eager mode, in training and eval, on both CPU implementations. Skipped where torch.compile cannot build
kernels (e.g. no C++ compiler)."""

import pytest
import torch

import sn


def _layer(stats=("in", "ln", "bn"), seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = sn.SwitchNorm2d(8, stats=stats, num_groups=4 if "gn" in stats else None)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(len(stats), generator=g))
        layer.var_weight.copy_(torch.randn(len(stats), generator=g))
        layer.weight.copy_(torch.rand(8, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(8, generator=g))
    return layer


def _dynamo_reports_exporting():
    """Whether this torch's dynamo answers torch.compiler.is_exporting() with True while it traces
    for torch.compile (torch 2.7 does): SN takes its composite form under compile there, as under
    export, since it cannot tell the two apart."""
    return bool(torch.compile(lambda t: t + torch.compiler.is_exporting(), backend="eager")(torch.zeros(1)).item())


def _compiled(layer, x):
    compiled = torch.compile(layer)
    try:
        compiled(x)
    except Exception as err:  # e.g. inductor finds no C++ compiler
        pytest.skip(f"torch.compile cannot build kernels here: {type(err).__name__}: {str(err)[:200]}")
    return compiled


@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("in", "ln", "bn", "gn")])
def test_compiled_layer_is_one_graph_and_matches_eager(stats, implementation):
    """With the C kernels loaded, the graph calls them as custom operators; without (GPUs, no
    compiler), it holds SN's plain operations for the compiler to fuse."""
    torch._dynamo.reset()
    x = torch.randn(4, 8, 5, 5) * 2 + 1
    explained = torch._dynamo.explain(_layer(stats))(x.clone().requires_grad_())
    assert explained.graph_break_count == 0, explained.break_reasons
    targets = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
    kernels = implementation == "C kernels" and not _dynamo_reports_exporting()
    assert any("switchnorm.forward" in t for t in targets) == kernels, targets
    eager, layer = _layer(stats), _layer(stats)
    compiled = _compiled(layer.eval(), x)  # (compiles the eval graph; changes no state)
    layer.train()
    for step in range(2):  # training: outputs, gradients, running statistics
        xe, xc = (x + step).requires_grad_(), (x + step).requires_grad_()
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(ye)
        ye.backward(grad)
        yc.backward(grad)
        torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
        for (name, pe), pc in zip(eager.named_parameters(), layer.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad, atol=1e-5, rtol=1e-5, msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(eager, name), msg=name)
    eager.eval(), layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)


OPS_CASES = [  # (stats, devices, running statistics, affine, dtype)
    (("in", "ln", "bn"), 1, False, True, torch.float32),
    (("in", "ln", "bn", "gn"), 2, False, True, torch.float64),
    (("in", "ln", "bn"), 2, True, False, torch.float64),
    (("ln", "gn"), 1, False, True, torch.float32),
]


@pytest.mark.parametrize("stats,devices,running,affine,dtype", OPS_CASES)
def test_custom_operators_match_the_eager_kernels_and_pass_opcheck(stats, devices, running, affine, dtype):
    """The operators the compiled graph calls: the same outputs, batch moments and gradients as
    the eager C kernels, and torch.library.opcheck's checks (schema, fake-tensor shapes,
    autograd registration, AOT dispatch)."""
    from sn import native_ops as SNO
    from sn.config import Config
    from sn_paths import rows

    g = torch.Generator().manual_seed(1)
    n, c = 4, 8
    x = (torch.randn(n, c, 6, generator=g, dtype=dtype) * 2 + 3).requires_grad_()
    params = [torch.randn(len(stats), generator=g, dtype=dtype).requires_grad_() for _ in range(2)]
    params += [torch.randn(c, generator=g, dtype=dtype).requires_grad_() if affine else None for _ in range(2)]
    kw = dict(eps=1e-5, num_groups=4 if "gn" in stats else 1, devices=devices)
    if running:
        kw.update(bn_mean=torch.randn(c, dtype=dtype), bn_var=torch.rand(c, dtype=dtype) + 0.5)
    config = Config(stats, kw["num_groups"], devices, kw["eps"])
    out_o, bn_o = SNO.switch_norm(x, *params, config, kw.get("bn_mean"), kw.get("bn_var"))
    with sn.implementation("native"):
        out_e, bn_e = rows(x, *params, stats, **kw)  # (the eager C kernels)
    torch.testing.assert_close(out_o, out_e, atol=0, rtol=0)
    assert (bn_o is None) == (bn_e is None)
    if bn_e is not None:
        torch.testing.assert_close(bn_o[0], bn_e[0]), torch.testing.assert_close(bn_o[1], bn_e[1])
    grad = torch.randn_like(out_e)
    leaves = [t for t in [x] + params if t is not None]
    for a, b in zip(torch.autograd.grad(out_o, leaves, grad), torch.autograd.grad(out_e, leaves, grad)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    ops = [sn.native.OP_CODES[op] for op in stats]
    devices = devices if "bn" in stats and not running else 1
    torch.library.opcheck(SNO.forward_op, (x, *params, kw.get("bn_mean"), kw.get("bn_var"), ops, 1e-5,
                                           kw["num_groups"], devices))


@pytest.mark.parametrize("old_dynamo", [False, True], ids=["contextvar", "mirror"])
def test_compiled_code_follows_the_implementation_context(monkeypatch, old_dynamo):
    """Compiled SN takes the path ``sn.implementation(...)`` prefers where it is called (nested
    blocks included), with no graph break, and a compiled layer called inside and outside such a
    block recompiles rather than reusing the other path. Before torch 2.14 dynamo cannot trace the
    ContextVar that holds the preference, and compiled code reads a global mirror of it instead
    (``old_dynamo``: that path forced here; on torch 2.7 it was checked by hand)."""
    from sn import functional as SNF

    if SNF._OLD_DYNAMO and not old_dynamo:
        pytest.skip(f"torch {torch.__version__}'s compiler cannot read the preference's ContextVar, so SN never takes "
                    f"that path here; the 'mirror' case of this test checks the path it takes")
    monkeypatch.setattr(SNF, "_OLD_DYNAMO", old_dynamo)
    layer = _layer().eval()
    x = torch.randn(4, 8, 5, 5)
    native = sn.native.status() == "in use" and not _dynamo_reports_exporting()

    def ops(context):  # (a fresh trace: whether its graph calls the C kernels)
        torch._dynamo.reset()
        with context:
            explained = torch._dynamo.explain(layer)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        return any("switchnorm.forward" in str(node.target) for g in explained.graphs for node in g.graph.nodes)

    import contextlib

    assert ops(contextlib.nullcontext()) == native
    assert not ops(sn.implementation("composite"))
    nested = contextlib.ExitStack()
    nested.enter_context(sn.implementation("composite"))
    nested.enter_context(sn.implementation("auto"))  # (the inner block holds)
    assert ops(nested) == native
    assert SNF._COMPILED_PREFERENCE is None and SNF._PREFERENCE.get() is None

    torch._dynamo.reset()
    taken = []
    select = SNF.select_implementation
    monkeypatch.setattr(SNF, "select_implementation", lambda *a, **k: taken.append(select(*a, **k)) or taken[-1])
    compiled = _compiled(layer, x)
    with sn.implementation("composite"):
        inside = compiled(x)
    outside = compiled(x)
    assert taken[0] == ("native-op" if native else "composite") and "composite" in taken[1:], taken
    torch.testing.assert_close(inside, layer(x)), torch.testing.assert_close(outside, layer(x))
