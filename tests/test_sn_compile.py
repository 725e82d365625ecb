"""SN under torch.compile: one graph (no breaks), and the same outputs, gradients and running
statistics as eager mode, in training and eval. Skipped where torch.compile cannot build
kernels (e.g. no C++ compiler)."""
import copy

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


def _compiled(layer, x):
    compiled = torch.compile(layer)
    try:
        compiled(x)
    except Exception as err:  # e.g. inductor finds no C++ compiler
        pytest.skip(f"torch.compile cannot build kernels here: {type(err).__name__}: {str(err)[:200]}")
    return compiled


@pytest.mark.parametrize("stats", [("in", "ln", "bn"), ("in", "ln", "bn", "gn")])
def test_compiled_layer_is_one_graph_and_matches_eager(stats):
    torch._dynamo.reset()
    x = torch.randn(4, 8, 5, 5) * 2 + 1
    explained = torch._dynamo.explain(_layer(stats))(x.clone().requires_grad_())
    assert explained.graph_break_count == 0, explained.break_reasons
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
