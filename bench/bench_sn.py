"""Speed and memory of SwitchNorm2d against BatchNorm2d, measured in the same run.

    .venv/bin/python -m bench.bench_sn                 # CPU, all figures (~2-4 minutes on 2 cores)
    .venv/bin/python -m bench.bench_sn --device cuda   # the same on a GPU

Every figure is a median over ``--repeats`` timed runs after warm-up, printed with its ratio to
BatchNorm2d on the same input. Machines are noisy: compare ratios, not milliseconds.
"""
import argparse
import statistics
import time

import torch
from torch import nn

import sn
from sn import functional as SNF

from .baselines import PublishedFormSN, ThreeMomentsSN

SHAPES = [(8, 64, 56), (32, 64, 32), (8, 256, 14), (2, 64, 56), (32, 16, 28)]


class AutogradSN(sn.SwitchNorm2d):
    """Our layer through its plain-autograd reference path (no fused backward, no inference path)."""

    def forward(self, input):
        n, c = input.shape[:2]
        use_running = not self._uses_batch_bn()
        out, _ = SNF.switch_norm_autograd(
            input.reshape(n, c, -1), self.mean_weight, self.var_weight, self.weight, self.bias, self.stats,
            eps=self.eps, bn_mean=self.running_mean if use_running else None,
            bn_var=self.running_var if use_running else None)
        return out.reshape(input.shape)


LAYERS = {
    "BatchNorm2d": lambda c: nn.BatchNorm2d(c),
    "GroupNorm(32)": lambda c: nn.GroupNorm(min(32, c), c),
    "SN published form": PublishedFormSN,
    "SN Fig.7 form": ThreeMomentsSN,
    "SN autograd (ours)": AutogradSN,
    "SN fused (ours)": sn.SwitchNorm2d,
}


def compiled(build):
    """``build`` wrapped in ``torch.compile`` (fused kernels generated per shape)."""

    def make(c):
        return torch.compile(build(c))

    return make


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(layer, x):
    """Bytes of the distinct tensors autograd keeps for the backward of ``layer(x)``."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


def parse_shapes(text):
    """``"8x64x56,2x64x56"`` -> [(8, 64, 56), (2, 64, 56)] (N x C x H=W)."""
    try:
        shapes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"shapes must look like 8x64x56,2x64x56 (N x C x H=W), got {text!r}")
    return shapes


def bench_layers(device, repeats, shapes=SHAPES, dtype=torch.float32):
    rows = []
    for n, c, hw in shapes:
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtype)
        grad = torch.randn_like(x)
        xg = x.clone().requires_grad_()
        row = {"shape": (n, c, hw)}
        for name, build in LAYERS.items():
            layer = build(c).to(device)
            layer.train()

            def train_step():
                layer(xg).backward(grad)

            row[("train", name)] = median_time(train_step, device, repeats)
            layer.eval()
            with torch.no_grad():
                row[("eval", name)] = median_time(lambda: layer(x), device, repeats)
            layer.train()
            row[("memory", name)] = saved_bytes(layer, xg)
        rows.append(row)
    return rows


def print_table(rows, kind, unit):
    names = list(LAYERS)
    print(f"\n### {kind}: {unit}, ratio to BatchNorm2d\n")
    print("| shape (N, C, H=W) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    ratios = {name: [] for name in names}
    for row in rows:
        base = row[(kind, "BatchNorm2d")]
        cells = []
        for name in names:
            value = row[(kind, name)]
            ratios[name].append(value / base)
            shown = f"{value * 1e3:.2f} ms" if unit == "time" else f"{value / 2**20:.1f} MiB"
            cells.append(f"{shown} ({value / base:.2f}x)")
        print(f"| {row['shape']} | " + " | ".join(cells) + " |")
    print("| **median ratio** | " + " | ".join(f"**{statistics.median(r):.2f}x**" for r in ratios.values()) + " |")
    print("| max ratio | " + " | ".join(f"{max(r):.2f}x" for r in ratios.values()) + " |")
    return {name: statistics.median(r) for name, r in ratios.items()}


def small_resnet(norm, num_classes=10, width=16, blocks=3):
    """A CIFAR-style ResNet-20 (3 stages of ``blocks`` basic blocks) with ``sn.make_norm(norm)``."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.n1 = sn.make_norm(norm, cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.n2 = sn.make_norm(norm, cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), sn.make_norm(norm, cout))

        def forward(self, x):
            out = torch.relu(self.n1(self.conv1(x)))
            return torch.relu(self.n2(self.conv2(out)) + self.short(x))

    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), sn.make_norm(norm, width), nn.ReLU()]
    cin = width
    for stage in range(3):
        cout = width * 2 ** stage
        for b in range(blocks):
            layers.append(Block(cin, cout, 2 if (b == 0 and stage > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def bench_end_to_end(device, repeats, batch=64):
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    result = {}
    for norm in ("bn", "sn"):
        torch.manual_seed(0)
        model = small_resnet(norm).to(device)
        opt = torch.optim.SGD(sn.param_groups(model, 1e-4), lr=0.1, momentum=0.9)

        def step():
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        result[norm] = batch / median_time(step, device, repeats)
    print("\n### End to end: CIFAR-style ResNet-20 training step, batch 64, 32x32\n")
    print(f"| norm | images/s | ratio to BN |\n|---|---|---|")
    for norm, ips in result.items():
        print(f"| {norm} | {ips:.0f} | {ips / result['bn']:.2f}x |")
    return result["sn"] / result["bn"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (default 15)")
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES,
                        help="N x C x H=W shapes, comma-separated (default: the five of issue #8)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end ResNet figure")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile'd BN and SN (slow to start: compiles per shape)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but no CUDA device is available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# SwitchNorm2d vs BatchNorm2d on {name}, torch {torch.__version__}, float32, median of {args.repeats}")
    if args.compile:
        LAYERS["BatchNorm2d compiled"] = compiled(LAYERS["BatchNorm2d"])
        LAYERS["SN autograd compiled"] = compiled(AutogradSN)
    rows = bench_layers(device, args.repeats, args.shapes)
    train = print_table(rows, "train", "time")
    evalr = print_table(rows, "eval", "time")
    memory = print_table(rows, "memory", "memory")
    summary = [f"train fwd+bwd median {train['SN fused (ours)']:.2f}x BN",
               f"eval median {evalr['SN fused (ours)']:.2f}x BN",
               f"saved memory median {memory['SN fused (ours)']:.2f}x BN"]
    if not args.no_e2e:
        summary.append(f"ResNet-20 images/s {bench_end_to_end(device, max(5, args.repeats // 2)):.2f}x BN")
    print("\nSummary (ours): " + "; ".join(summary))


if __name__ == "__main__":
    main()
