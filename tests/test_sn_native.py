"""The C kernels (sn.native): that they are built and used here, their cache and fallback, and
numerics the shared tests (test_sn_fused.py and test_sn_inference.py run on both CPU
implementations) do not reach: thread-count invariance, float32 rows with extreme offsets,
and the one-pass moments' worst case."""
import os
import warnings

import pytest
import torch

import sn
from sn import native as SNN
from sn_paths import composite_rows, rows
from sn_reference import reference_switch_norm


def _layer(stats=("in", "ln", "bn"), c=16, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    layer = sn.SwitchNorm2d(c, stats=stats, **kw)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.randn(len(stats), generator=g))
        layer.var_weight.copy_(torch.randn(len(stats), generator=g))
        layer.weight.copy_(torch.randn(c, generator=g))
        layer.bias.copy_(torch.randn(c, generator=g))
    return layer


def _reference(layer, x):
    return reference_switch_norm(x, layer.mean_weight, layer.var_weight, layer.stats, layer.weight, layer.bias,
                                 eps=layer.eps, num_groups=layer.num_groups or 1, devices=layer.devices)


def _autograd_float64(layer, x):
    """The layer's maths in plain differentiable float64 operations (for reference gradients)."""
    n, c = x.shape[:2]
    params = [p.double() for p in (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)]
    out, _ = composite_rows(x.reshape(n, c, -1), *params, layer.stats, eps=layer.eps,
                            num_groups=layer.num_groups or 1, devices=layer.devices)
    return out.reshape(x.shape)


def _node(out):
    """The name of the autograd node that made ``out`` (under the layer's final reshape)."""
    node = out.grad_fn
    while node is not None and type(node).__name__.startswith(("View", "Reshape")):
        node = node.next_functions[0][0]
    return type(node).__name__


def test_kernels_are_built_here_and_used_for_cpu_float_inputs():
    assert SNN.library() is not None, SNN.status()
    assert SNN.status() == "in use"
    assert SNN.takes(torch.zeros(1, dtype=torch.float32)) and SNN.takes(torch.zeros(1, dtype=torch.float64))
    assert not SNN.takes(torch.zeros(1, dtype=torch.float16))
    layer = _layer()
    out = layer(torch.randn(4, 16, 5, 5, requires_grad=True))
    assert _node(out) == "NativeSwitchNormBackward"


def test_preferring_torch_operations_leaves_the_kernels():
    x = torch.randn(4, 16, 5, 5, requires_grad=True)
    with sn.implementation("torch"):
        assert _node(_layer()(x)) == "FusedSwitchNormBackward"
    assert _node(_layer(implementation="torch")(x)) == "FusedSwitchNormBackward"  # the layer's own choice
    assert _node(_layer()(x)) == "NativeSwitchNormBackward"
    with pytest.raises(ValueError, match="implementation must be one of"):
        _layer(implementation="cuda")
    with pytest.raises(ValueError, match="implementation='native' runs float32/float64 CPU tensors.*meta"):
        _layer(implementation="native").to("meta")(x.detach().to("meta"))  # (as a GPU tensor would)


def test_without_a_compiler_sn_warns_once_and_runs_on_torch_operations(monkeypatch):
    monkeypatch.setattr(SNN, "_state", {"tried": False, "lib": None, "error": None})
    monkeypatch.setattr(SNN, "_compiler", lambda: None)
    layer = _layer()
    x = torch.randn(4, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        out = layer.double()(x)
    assert _node(out) == "FusedSwitchNormBackward"
    torch.testing.assert_close(out, _reference(layer, x), atol=1e-12, rtol=0)
    assert SNN.status().startswith("unavailable: no C compiler")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # warned once only


def test_build_is_cached_per_source_and_a_failing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SN_CACHE_DIR", str(tmp_path))
    cc = SNN._compiler()
    first = SNN._build(cc)
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert SNN._build(cc) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temporary files left
    with pytest.raises(RuntimeError, match="false"):
        SNN._build("/bin/false")


def test_an_unwritable_cache_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.delenv("SN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # mkdir fails below a file
    monkeypatch.setattr(SNN.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert SNN._cache_dir().parent == tmp_path / "tmp"
    assert SNN._build(SNN._compiler()).parent.parent == tmp_path / "tmp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert SNN._cache_dir() == tmp_path / "cache" / "switchnorm" / "kernels"


def test_results_do_not_depend_on_the_thread_count():
    layer = _layer(stats=("in", "ln", "bn", "gn"), num_groups=4)
    x = torch.randn(4, 16, 32, 32) * 2 + 1  # above the size where the kernels go parallel
    grad = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            xg = x.clone().requires_grad_()
            out = layer(xg)
            grads = torch.autograd.grad(out, [xg, layer.mean_weight, layer.var_weight, layer.weight], grad)
            results.append((out,) + grads)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)  # each row is one thread's work, and every sum over rows is serial


@pytest.mark.parametrize("offset", [1e3, 1e5, 1e6])
def test_float32_training_with_large_offsets_and_an_outlying_first_value(offset):
    """float32 rows' moments are one pass over the values shifted by the row's first one; here
    that value lies 100 standard deviations out, on top of a large offset. The output and ``dx``
    subtract the mean in two parts, so they keep float32 accuracy relative to the spread (the
    torch-op path loses about offset * 1e-7)."""
    layer = _layer()
    x = torch.randn(4, 16, 6, 6, dtype=torch.float64) + offset
    x.view(4, 16, -1)[:, :, 0] += 100.0
    x32 = x.float().requires_grad_()
    out = layer(x32)
    ref = _reference(layer, x32.detach().double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    xd = x32.detach().double().requires_grad_()
    g_ref = torch.autograd.grad(_autograd_float64(layer, xd), xd, grad)[0]
    g = torch.autograd.grad(out, x32, grad.float())[0]
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5 * g_ref.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 3, 3), (5, 16, 1, 1)])
def test_degenerate_shapes_give_finite_float64_exact_results(shape):
    layer = _layer(devices=1).double()
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).requires_grad_()
    out = layer(x)
    torch.testing.assert_close(out, _reference(layer, x), atol=1e-10, rtol=1e-10)
    ref = _autograd_float64(layer, x)
    grad = torch.randn_like(ref)
    params = [x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_repeated_or_unknown_statistics_and_empty_rows_are_a_clear_error():
    x = torch.randn(2, 4, 3)
    logits = torch.zeros(2)
    with pytest.raises(ValueError, match="twice"):
        sn.switch_norm(x, logits, logits, stats=("in", "in"))
    with pytest.raises(ValueError, match="unknown statistics"):
        sn.switch_norm(x, logits, logits, stats=("in", "xn"))
    with pytest.raises(ValueError, match="spatial"):
        sn.switch_norm(torch.randn(2, 4, 0), logits, logits, stats=("in", "ln"))
    with pytest.raises(ValueError, match=r"\(2, 4, 0\)"):  # the kernels' own guard, behind those checks
        rows(torch.randn(2, 4, 0), logits, logits, None, None, ("in", "ln"))


def test_mixed_parameter_dtypes_return_gradients_in_each_parameters_dtype():
    layer = _layer()
    layer.mean_weight.data = layer.mean_weight.data.double()  # e.g. logits kept in float64
    x = torch.randn(3, 16, 4, 4, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert layer.mean_weight.grad.dtype == torch.float64 and layer.var_weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_eval_with_autograd_and_devices_takes_any_batch_size(monkeypatch):
    """``devices`` chunks only the batch BN statistics: with running statistics (eval) a batch
    that does not divide into them is fine, on both implementations alike."""
    layer = _layer(devices=2).eval()
    x = torch.randn(3, 16, 4, 4, requires_grad=True)
    out = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), atol=1e-6, rtol=1e-6)
    with sn.implementation("torch"):
        torch.testing.assert_close(out, layer(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="devices"):
        layer.train()(x)


def test_processes_building_at_once_all_get_a_working_library(tmp_path):
    """E.g. the processes of a DDP run starting on a fresh machine: each compiles to a temporary
    file and renames it into place, so none sees a half-written library."""
    import subprocess
    import sys

    code = ("import torch, sn; from sn import native; assert native.library() is not None, native.status(); "
            "torch.manual_seed(0); "
            "x = torch.randn(2, 4, 3, 3); print(float(sn.SwitchNorm2d(4)(x).abs().sum()))")
    env = dict(os.environ, SN_CACHE_DIR=str(tmp_path), SN_NATIVE="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert len({out for out, _ in outs}) == 1  # the same input, the same result everywhere
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # one library, no temporary files left


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stats,devices", [(("in", "ln", "bn"), 1), (("in", "ln", "bn", "gn"), 2), (("ln", "gn"), 1)])
@pytest.mark.parametrize("c", [8, 70])  # one channel block, and more than one (64 channels per block)
def test_channels_last_inputs_are_read_in_place_and_match_float64(stats, devices, c, dtype):
    """The kernels read channels-last data as it lies (no copy in, a channels-last output) and
    give the contiguous layout's numbers, outputs and gradients, in training and eval."""
    layer = _layer(stats, c=c, devices=devices, num_groups=2 if "gn" in stats else None).to(dtype)
    x = (torch.randn(4, c, 5, 3, dtype=dtype) * 3 + 1e3)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    xn = x.clone().requires_grad_()
    out_c, out_n = layer(xc), layer(xn)
    assert out_c.is_contiguous(memory_format=torch.channels_last) and _node(out_c) == "NativeSwitchNormBackward"
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out_c.double(), _reference(layer, x), **tol)
    torch.testing.assert_close(out_c, out_n, **tol)
    grad = torch.randn_like(out_n)
    for g in (grad, grad.to(memory_format=torch.channels_last)):  # either layout of the upstream gradient
        params = [layer.mean_weight, layer.var_weight, layer.weight, layer.bias]
        got = torch.autograd.grad(layer(xc), [xc] + params, g)
        want = torch.autograd.grad(layer(xn), [xn] + params, grad)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-10 if dtype == torch.float64 else 1e-4, rtol=1e-5)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(xc), layer(xn), **tol)
