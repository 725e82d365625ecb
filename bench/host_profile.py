"""Where one SN layer's time goes on the host: cProfile of training steps and eval calls on the
Triton path (GPU only; also with ``sn.triton_launch`` on), and the launch cost of an empty
Triton kernel with few and many arguments; and on the device: each kernel's time in a training
step of BN and of SN on the Triton kernels (``torch.profiler``), at a small and a large map.

    python -m bench.host_profile [--shape 8x64x56] [--calls 200] [--kernel-shapes 8x256x14,32x256x56]
"""
import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
import triton
import triton.language as tl

import sn
from sn import triton_launch as SNL


@triton.jit
def _empty1(a):
    pass


@triton.jit
def _empty30(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, X: tl.constexpr, Y: tl.constexpr):
    pass


def _median_us(fn, calls):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def kernel_times(shapes, steps=20):
    """Each kernel's device time per training step (forward and backward) of BN and of SN on the
    Triton kernels, from ``torch.profiler``'s CUDA activity, at every ``(N, C, H=W)`` of ``shapes``."""
    from torch.profiler import ProfilerActivity, profile

    for n, c, hw in shapes:
        x = torch.randn(n, c, hw, hw, device="cuda", requires_grad=True)
        g = torch.randn_like(x)
        layers = (("bn", torch.nn.BatchNorm2d(c)), ("sn triton", sn.SwitchNorm2d(c, implementation="triton")))
        for name, layer in layers:
            layer = layer.cuda().train()
            for _ in range(3):  # (compiled and warm)
                layer(x).backward(g)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    layer(x).backward(g)
                torch.cuda.synchronize()
            kernels = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                             key=lambda e: -e.self_device_time_total)
            total = sum(e.self_device_time_total for e in kernels) / steps
            print(f"\n## device time per training step, {name}, ({n}, {c}, {hw}, {hw}): {total:.1f} us in "
                  f"{sum(e.count for e in kernels) / steps:.0f} kernels\n")
            print("| kernel | per step | us per step |\n|---|---|---|")
            for e in kernels:
                print(f"| {e.key[:70]} | {e.count / steps:g} | {e.self_device_time_total / steps:.1f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="8x64x56")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--kernel-shapes", default="8x256x14,32x256x56",
                        help="N x C x H=W shapes of the per-kernel device times, comma-separated")
    args = parser.parse_args(argv)
    kernel_shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.kernel_shapes.split(",")]
    n, c, hw = (int(v) for v in args.shape.split("x"))
    x = torch.randn(n, c, hw, hw, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    t = torch.empty(16, device="cuda")
    ints = list(range(3, 23))
    print(f"# host costs, torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    print(f"empty kernel, 1 pointer: {_median_us(lambda: _empty1[(1,)](t), args.calls):.1f} us per launch (no sync)")
    print("empty kernel, 10 pointers + 20 ints + 2 constexprs: "
          f"{_median_us(lambda: _empty30[(1,)](*[t] * 10, *ints, X=4, Y=True), args.calls):.1f} us")
    print(f"torch.empty_like: {_median_us(lambda: torch.empty_like(x), args.calls):.1f} us")
    bn = torch.nn.BatchNorm2d(c).cuda()
    layers = {"bn": bn, "sn torch": sn.SwitchNorm2d(c, implementation="torch").cuda(),
              "sn triton": sn.SwitchNorm2d(c, implementation="triton").cuda(),
              "sn triton, direct launch": sn.SwitchNorm2d(c, implementation="triton").cuda()}
    for name, layer in layers.items():
        with SNL.direct(name.endswith("direct launch")):  # (sn.triton_launch: compiled programs kept)
            layer.train()
            train = _median_us(lambda: layer(x).backward(g), args.calls)
            layer.eval()
            with torch.no_grad():
                ev = _median_us(lambda: layer(x), args.calls)
            layer.train()
        print(f"{name}: train step {train:.0f} us host (no sync), eval {ev:.0f} us")
    for mode, label in (("train", "sn triton"), ("eval", "sn triton"), ("train", "sn triton, direct launch")):
        layer = layers[label]
        layer.train(mode == "train")
        prof = cProfile.Profile()
        with torch.set_grad_enabled(mode == "train"), SNL.direct(label.endswith("direct launch")):
            prof.enable()
            for _ in range(args.calls):
                out = layer(x)
                if mode == "train":
                    out.backward(g)
            prof.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(22)
        print(f"\n## cProfile, {label} {mode}, {args.calls} calls\n" + text.getvalue())
    kernel_times(kernel_shapes)


if __name__ == "__main__":
    main()
