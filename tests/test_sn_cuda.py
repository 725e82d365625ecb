"""The same layer on a GPU (skipped where there is none; run on a GPU machine when available)."""
import pytest
import torch

import sn
from sn_reference import reference_switch_norm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("stats,devices", [(("in", "ln", "bn"), 1), (("in", "ln", "bn", "gn"), 4), (("ln", "gn"), 1)])
def test_cuda_matches_cpu_outputs_and_gradients(stats, devices):
    torch.manual_seed(0)
    cpu = sn.SwitchNorm2d(32, stats=stats, devices=devices, num_groups=8 if "gn" in stats else None)
    with torch.no_grad():
        cpu.mean_weight.normal_(), cpu.var_weight.normal_(), cpu.weight.uniform_(0.5, 1.5), cpu.bias.normal_()
    gpu = sn.SwitchNorm2d(32, stats=stats, devices=devices, num_groups=cpu.num_groups).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(8, 32, 9, 9) * 3 + 100
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_c, out_g = cpu(xc), gpu(xg)
    torch.testing.assert_close(out_g.cpu(), out_c, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(out_c)
    out_c.backward(grad), out_g.backward(grad.cuda())
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-4, rtol=1e-3)
    for name, p in cpu.named_parameters():
        torch.testing.assert_close(getattr(gpu, name).grad.cpu(), p.grad, atol=1e-3, rtol=1e-3, msg=name)
    torch.testing.assert_close(gpu.running_var.cpu(), cpu.running_var, atol=1e-4, rtol=1e-4)


def test_cuda_large_offset_and_reference():
    torch.manual_seed(1)
    layer = sn.SwitchNorm2d(16).cuda()
    x = (torch.randn(4, 16, 6, 6) + 1e4).cuda()
    ref = reference_switch_norm(x.cpu(), layer.mean_weight.cpu(), layer.var_weight.cpu(), layer.stats,
                                layer.weight.cpu(), layer.bias.cpu())
    assert (layer(x).double().cpu() - ref).abs().max() < 4 * 1e4 * 2.0 ** -23 + 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_is_finite_and_close(dtype):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(8, 16, 3).cuda()
    layer = sn.SwitchNorm2d(16).cuda()
    x = torch.randn(4, 8, 12, 12, device="cuda") * 50 + 300
    with torch.autocast("cuda", dtype=dtype):
        h = conv(x)
        out = layer(h)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = reference_switch_norm(h.float().cpu(), layer.mean_weight.cpu(), layer.var_weight.cpu(), layer.stats,
                                layer.weight.cpu(), layer.bias.cpu())
    torch.testing.assert_close(out.double().cpu(), ref, atol=0.05, rtol=0.02)
    out.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_cuda_training_and_eval_steps_do_not_synchronize_with_the_host():
    """A host sync per layer would stall the GPU queue at every SN layer of a network (the
    importance weights stay 0-d device tensors on GPUs)."""
    layer = sn.SwitchNorm2d(16, stats=("in", "ln", "bn", "gn"), num_groups=4).cuda()
    x = torch.randn(4, 16, 8, 8, device="cuda", requires_grad=True)
    layer(x).sum().backward()  # warm-up (allocations, lazy initialisation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    layer.eval()
    with torch.no_grad():
        layer(x)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_cuda_triton_path_matches_the_torch_path_and_does_not_synchronize():
    """The Triton kernels on a GPU (tests/test_sn_triton.py checks them against float64 maths,
    in the interpreter where there is no GPU)."""
    pytest.importorskip("triton")
    torch.manual_seed(3)
    x = (torch.randn(8, 32, 14, 14, device="cuda") * 3 + 2).to(memory_format=torch.channels_last)
    outs, grads = [], []
    for impl in ("torch", "triton"):
        torch.manual_seed(4)
        layer = sn.SwitchNorm2d(32, stats=("in", "ln", "bn", "gn"), num_groups=8, devices=2,
                                implementation=impl).cuda()
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.square().sum().backward()
        outs.append(out.detach()), grads.append(xi.grad)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(xi).sum().backward()
            layer.eval()
            with torch.no_grad():
                layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("implementation", ["auto", "torch"])
def test_cuda_training_step_replayed_from_a_cuda_graph_matches_eager(implementation):
    """A training step captured in a CUDA graph (as ``torch.compile(mode="reduce-overhead")`` and
    whole-network capture do) and replayed on new data gives the eager step's output, gradients
    and running statistics."""
    torch.manual_seed(5)
    make = lambda: sn.SwitchNorm2d(16, stats=("in", "ln", "bn", "gn"), num_groups=4,  # noqa: E731
                                   implementation=implementation).cuda()
    graphed, eager = make(), make()
    with torch.no_grad():
        graphed.mean_weight.normal_(), graphed.var_weight.normal_(), graphed.weight.uniform_(0.5, 1.5)
    eager.load_state_dict(graphed.state_dict())
    static_x = torch.randn(4, 16, 7, 7, device="cuda", requires_grad=True)
    static_g = torch.randn(4, 16, 7, 7, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) on a side stream, as capture asks
        for _ in range(2):
            graphed(static_x).backward(static_g)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        eager(static_x.detach().clone().requires_grad_()).backward(static_g)
    for p in [static_x, *graphed.parameters()]:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = graphed(static_x)
        static_out.backward(static_g)
    for step in range(3):
        x = torch.randn(4, 16, 7, 7, device="cuda") * (step + 1) + 3 * step
        g = torch.randn_like(x)
        static_x.data.copy_(x), static_g.copy_(g)
        for p in [static_x, *graphed.parameters()]:
            p.grad.zero_()
        graph.replay()
        xe = x.clone().requires_grad_()
        for p in eager.parameters():
            p.grad = None
        out = eager(xe)
        out.backward(g)
        torch.testing.assert_close(static_out, out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(static_x.grad, xe.grad, atol=1e-4, rtol=1e-4)
        for name, p in eager.named_parameters():
            torch.testing.assert_close(getattr(graphed, name).grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)
        for name, b in eager.named_buffers():
            torch.testing.assert_close(getattr(graphed, name), b, msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_layer_on_a_device_other_than_the_current_one():
    """A model moved to cuda:1 while cuda:0 is current (DDP without torch.cuda.set_device): the
    Triton kernels must launch on the tensors' device, matching the CPU layer."""
    torch.manual_seed(6)
    cpu = sn.SwitchNorm2d(16, stats=("in", "ln", "bn", "gn"), num_groups=4)
    gpu = sn.SwitchNorm2d(16, stats=("in", "ln", "bn", "gn"), num_groups=4).to("cuda:1")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 16, 9, 9) * 2 + 1
    xc, xg = x.clone().requires_grad_(), x.to("cuda:1").requires_grad_()
    with torch.cuda.device(0):
        out_g = gpu(xg)
        out_g.square().sum().backward()
    out_c = cpu(xc)
    out_c.square().sum().backward()
    torch.testing.assert_close(out_g.cpu(), out_c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(gpu.running_var.cpu(), cpu.running_var, atol=1e-5, rtol=1e-5)
