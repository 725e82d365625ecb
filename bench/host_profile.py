"""Where one SN layer's time goes on the host: cProfile of training steps and eval calls on the
Triton path (GPU only; also with ``sn.triton_launch`` on), and the launch cost of an empty
Triton kernel with few and many arguments.

    python -m bench.host_profile [--shape 8x64x56] [--calls 200]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="8x64x56")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
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

if __name__ == "__main__":
    main()
