"""Speed and memory of SwitchNorm2d against BatchNorm2d, measured in the same run.

    .venv/bin/python -m bench.bench_sn                 # CPU, all figures (under a minute on 2 cores)
    .venv/bin/python -m bench.bench_sn --device cuda   # the same on a GPU

Every figure is a median over ``--repeats`` timed runs after warm-up (the layers timed in turn
within each repeat), printed with its ratio to BatchNorm2d on the same input. Machines are
noisy: compare ratios, not milliseconds.
"""
import argparse
import functools
import statistics
import time
import warnings

import torch
from torch import nn

import sn
from sn import functional as SNF
from sn import native as SNN
from sn import triton_launch as SNL

from tasks.classify.model import CifarResNet, norm_factory

from .baselines import PublishedFormSN, ThreeMomentsSN

SHAPES = [(8, 64, 56), (32, 64, 32), (8, 256, 14), (2, 64, 56), (32, 16, 28)]
# on GPUs also ImageNet-sized ones: ResNet-50's stages at batch 32
GPU_SHAPES = SHAPES + [(32, 256, 56), (32, 512, 28), (32, 1024, 14), (64, 512, 14)]


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

LAYERS = {
    "BatchNorm2d": lambda c: nn.BatchNorm2d(c),
    "GroupNorm(32)": lambda c: nn.GroupNorm(min(32, c), c),
    "SN published form": PublishedFormSN,
    "SN Fig.7 form": ThreeMomentsSN,
    # our layer on each of its eager paths: plain autograd operations ("composite"), the PyTorch-operation
    # path ("torch"), and as it runs here (the C kernels on CPUs, the Triton kernels on CUDA)
    "SN autograd (ours)": functools.partial(sn.SwitchNorm2d, implementation="composite"),
    "SN torch ops (ours)": functools.partial(sn.SwitchNorm2d, implementation="torch"),
    "SN (ours)": sn.SwitchNorm2d,
}
DIRECT = "SN direct launch (ours)"  # (CUDA: "SN (ours)" with sn.triton_launch on, in its own row)


def direct_launch_sn(c):
    """SN on the Triton kernels, its steps run within ``sn.triton_launch.direct()`` (bench_layers
    and bench_resnet50 look for the ``direct_launch`` mark)."""
    layer = sn.SwitchNorm2d(c)
    layer.direct_launch = True
    return layer


def in_direct_launch(fn, model):
    """``fn`` run within ``sn.triton_launch.direct()`` where ``model`` is so marked."""
    if not getattr(model, "direct_launch", False):
        return fn

    def run():
        with SNL.direct():
            return fn()

    return run


def compiled(build, mode="default"):
    """``build`` wrapped in ``torch.compile`` (fused kernels generated per shape; ``mode``
    ``"reduce-overhead"`` replays each compiled graph from a CUDA graph)."""

    def make(c):
        return torch.compile(build(c), mode=mode)

    return make


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns, device, repeats, warmup=3):
    """Median time of every function in ``fns``, timed in turn within each repeat, so that a
    slow phase of the machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def captured(fn, params):
    """``fn`` captured in a CUDA graph (after warm-up on a side stream, the gradients of
    ``params`` set to None so that the graph allocates and accumulates them), its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def median_graph_times(fns, repeats, replays=10):
    """Device time per call of every function in ``fns``, each captured in a CUDA graph and
    timed with CUDA events over ``replays`` replays: the kernels' time without the host's
    launch overhead (median of ``repeats``)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, replay in fns.items():
            events[0].record()
            for _ in range(replays):
                replay()
            events[1].record()
            events[1].synchronize()
            times[name].append(events[0].elapsed_time(events[1]) / 1e3 / replays)
    return {name: statistics.median(t) for name, t in times.items()}


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


def bench_layers(device, repeats, shapes=SHAPES, dtype=torch.float32, names=None,
                 memory_format=torch.contiguous_format, graphs=False):
    """Train, eval and saved-memory figures of the layers ``names`` (default: all of LAYERS);
    ``graphs``: the train and eval calls replayed from CUDA graphs (device time), no memory."""
    rows = []
    for n, c, hw in shapes:
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=memory_format)
        grad = torch.randn_like(x)
        xg = x.clone().requires_grad_()
        row = {"shape": (n, c, hw)}
        layers = {name: LAYERS[name](c).to(device) for name in (names or LAYERS)}

        def train_step(layer):
            return in_direct_launch(lambda: layer(xg).backward(grad), layer)

        def eval_step(layer):
            return in_direct_launch(lambda: layer(x), layer)

        for layer in layers.values():
            layer.train()
        if graphs:
            fns = {k: captured(train_step(v), [xg, *v.parameters()]) for k, v in layers.items()}
            for name, t in median_graph_times(fns, repeats).items():
                row[("train", name)] = t
            for layer in layers.values():
                layer.eval()
            with torch.no_grad():
                fns = {k: captured(eval_step(v), []) for k, v in layers.items()}
            for name, t in median_graph_times(fns, repeats).items():
                row[("eval", name)] = t
            rows.append(row)
            del fns
            continue
        for name, t in median_times({k: train_step(v) for k, v in layers.items()}, device, repeats).items():
            row[("train", name)] = t
        for layer in layers.values():
            layer.eval()
        with torch.no_grad():
            for name, t in median_times({k: eval_step(v) for k, v in layers.items()}, device, repeats).items():
                row[("eval", name)] = t
        for name, layer in layers.items():
            layer.train()
            row[("memory", name)] = saved_bytes(layer, xg)
        rows.append(row)
    return rows


def print_table(rows, kind, unit, names=None, title=None):
    names = list(names or LAYERS)
    print(f"\n### {title or kind}: {unit}, ratio to BatchNorm2d\n")
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
    """A CIFAR-style ResNet-20 (3 stages of ``blocks`` basic blocks) with ``sn.make_norm(norm)``:
    the classification task's network, :class:`tasks.classify.model.CifarResNet`."""
    return CifarResNet(6 * blocks + 2, num_classes, 3, width, norm_factory(norm))


def bench_end_to_end(device, repeats, batch=64, compile_too=False):
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    variants = [("bn", False), ("sn", False)] + ([("bn", True), ("sn", True)] if compile_too else [])
    steps = {}
    for norm, use_compile in variants:
        torch.manual_seed(0)
        model = small_resnet(norm).to(device)
        opt = torch.optim.SGD(sn.param_groups(model, 1e-4), lr=0.1, momentum=0.9)
        run = torch.compile(model) if use_compile else model

        def step(run=run, opt=opt):
            opt.zero_grad()
            nn.functional.cross_entropy(run(x), y).backward()
            opt.step()

        steps[norm + (" compiled" if use_compile else "")] = step
    result = {name: batch / t for name, t in median_times(steps, device, repeats).items()}
    print(f"\n### End to end: CIFAR-style ResNet-20 training step, batch {batch}, 32x32\n")
    print("| norm | images/s | ratio to BN |\n|---|---|---|")
    for norm, ips in result.items():
        print(f"| {norm} | {ips:.0f} | {ips / result['bn']:.2f}x |")
    return result["sn"] / result["bn"]


RESNET50_VARIANTS = {"bn": None, "sn": "auto", "sn torch ops": "torch"}  # name: SN's implementation
# (and "sn direct launch": "direct", the Triton kernels launched by sn.triton_launch; on CUDA in eager mode)


def bench_resnet50(device, repeats, batch=32, size=224, variants=RESNET50_VARIANTS, graphs=False):
    """torchvision's ResNet-50 training step (GPUs): BN, SN as it runs there (the Triton kernels
    on CUDA), SN on PyTorch operations; images/s and ratios to BN. ``graphs``: each whole step
    (forward, backward, SGD) captured in a CUDA graph and replayed, as whole-network capture and
    ``torch.compile(mode="reduce-overhead")`` run it: the device's time without the host's."""
    import torchvision

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    steps = {}
    for name, impl in variants.items():
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None)
        if impl is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = sn.convert(model, implementation="auto" if impl == "direct" else impl)
            model.direct_launch = impl == "direct"
        model = model.to(device)
        opt = torch.optim.SGD(sn.param_groups(model, 1e-4), lr=0.1, momentum=0.9)

        def step(model=model, opt=opt):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        steps[name] = captured(step, list(model.parameters())) if graphs else in_direct_launch(step, model)
    if graphs:
        result = {name: batch / t for name, t in median_graph_times(steps, repeats, replays=3).items()}
        title = f"End to end: ResNet-50 training step replayed from a CUDA graph, batch {batch}, {size}x{size}"
        return print_images_per_second(result, "norm", title)
    return images_per_second(steps, device, repeats, batch, "norm",
                             f"End to end: ResNet-50 training step, batch {batch}, {size}x{size}")


def _one_hot_ssn(seed, tied):
    """ResNet-20 with Sparse SN at the end of its radius schedule: seeded logits, so each layer's
    means and variances end on a drawn normalizer (``tied``: the same one for both, every layer
    then freezes into a plain one)."""
    torch.manual_seed(seed)
    model = small_resnet("ssn")
    with torch.no_grad():
        for _, layer in sn.switch_norm_layers(model):
            layer.mean_weight.normal_()
            layer.var_weight.copy_(layer.mean_weight) if tied else layer.var_weight.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    sn.set_radius(model, 10.0)  # the largest radius: one-hot
    return model.eval()


def bench_eval_deploy(device, repeats, batch=64):
    """Eval of a CIFAR-style ResNet-20, end to end: BN, SN, Sparse SN one-hot, and Sparse SN
    frozen by :func:`sn.freeze` into plain layers (as drawn, and with tied mean/variance choices);
    images/s and ratios to BN."""
    x = torch.randn(batch, 3, 32, 32, device=device)
    models = {}
    torch.manual_seed(0)
    models["bn"] = small_resnet("bn").eval()
    torch.manual_seed(0)
    models["sn"] = small_resnet("sn").eval()
    models["ssn one-hot"] = _one_hot_ssn(0, tied=False)
    notes = {}
    for name, tied in (("ssn frozen", False), ("ssn frozen, tied", True)):
        source = _one_hot_ssn(0, tied=tied)
        plan = sn.freeze_plan(source)
        models[name] = sn.freeze(source)
        notes[name] = f"{sum(p['action'] == 'frozen' for p in plan)} of {len(plan)} layers plain"
    fns = {}
    for name, model in models.items():
        model = model.to(device)

        @torch.no_grad()
        def forward(model=model):
            model(x)

        fns[name] = forward
    return images_per_second(fns, device, repeats, batch, "model",
                             f"End to end: ResNet-20 eval (inference), batch {batch}, 32x32", notes)


def images_per_second(fns, device, repeats, batch, label, title, notes=None):
    """Time ``fns`` (name -> a call on one batch, ``"bn"`` among them) in one run, print images/s
    and the ratio to BN as a markdown table under ``title``; returns the ratios but BN's."""
    result = {name: batch / t for name, t in median_times(fns, device, repeats).items()}
    return print_images_per_second(result, label, title, notes)


def print_images_per_second(result, label, title, notes=None):
    """``result`` (name -> images/s, ``"bn"`` among them) as a markdown table; the ratios to BN."""
    print(f"\n### {title}\n")
    extra = ("", "") if notes is None else (" note |", "---|")
    print(f"| {label} | images/s | ratio to BN |{extra[0]}\n|---|---|---|{extra[1]}")
    for name, ips in result.items():
        note = "" if notes is None else f" {notes.get(name, '')} |"
        print(f"| {name} | {ips:.0f} | {ips / result['bn']:.2f}x |{note}")
    return {name: ips / result["bn"] for name, ips in result.items() if name != "bn"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (default 15)")
    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help="N x C x H=W shapes, comma-separated (default: five small and mid-sized ones; on "
                             "GPUs also ResNet-50's stage shapes at batch 32)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end ResNet figure")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile'd BN and SN (slow to start: compiles per shape and mode)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead"), default="default",
                        help="torch.compile's mode for --compile (reduce-overhead: CUDA graphs on GPUs)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="the input's dtype (parameters stay float32, as under autocast; default float32)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but no CUDA device is available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# SwitchNorm2d vs BatchNorm2d on {name}, torch {torch.__version__}, {args.dtype} input, median of "
          f"{args.repeats}")
    if device.type == "cpu":
        print(f"# SN (ours) on the CPU: C kernels {SNN.status()}")
    else:  # "SN (ours)" runs the Triton kernels on CUDA (sn.functional.triton_by_default)
        index = device.index if device.index is not None else torch.cuda.current_device()
        print(f"# SN (ours) on this GPU: {'Triton kernels' if SNF.triton_device(index) else 'PyTorch operations'}")
    shapes = args.shapes or (GPU_SHAPES if device.type == "cuda" else SHAPES)
    if device.type == "cuda":
        LAYERS[DIRECT] = direct_launch_sn
    if args.compile:
        LAYERS["BatchNorm2d compiled"] = compiled(LAYERS["BatchNorm2d"], args.compile_mode)
        LAYERS["SN compiled (ours)"] = compiled(sn.SwitchNorm2d, args.compile_mode)
    if dtype != torch.float32:  # (the paper-form baselines are float32 references)
        for name in ("SN published form", "SN Fig.7 form", "SN autograd (ours)"):
            LAYERS.pop(name)
        # (nn.GroupNorm takes no float32 parameters with a half input, as BN and SN do: its own dtype)
        LAYERS["GroupNorm(32)"] = lambda c: nn.GroupNorm(min(32, c), c).to(dtype)
    rows = bench_layers(device, args.repeats, shapes, dtype)
    train = print_table(rows, "train", "time")
    evalr = print_table(rows, "eval", "time")
    memory = print_table(rows, "memory", "memory")
    # channels_last inputs (every layer keeps the format)
    cl_names = ["BatchNorm2d", "SN torch ops (ours)", "SN (ours)"]
    cl_rows = bench_layers(device, args.repeats, shapes, dtype, names=cl_names, memory_format=torch.channels_last)
    cl_train = print_table(cl_rows, "train", "time", cl_names, "train, channels_last input")
    cl_eval = print_table(cl_rows, "eval", "time", cl_names, "eval, channels_last input")
    summary = [f"train fwd+bwd median {train['SN (ours)']:.2f}x BN",
               f"eval median {evalr['SN (ours)']:.2f}x BN",
               f"saved memory median {memory['SN (ours)']:.2f}x BN",
               f"channels_last train median {cl_train['SN (ours)']:.2f}x BN, eval {cl_eval['SN (ours)']:.2f}x BN"]
    if device.type == "cuda":  # the kernels' own time: each call replayed from a CUDA graph
        g_names = ["BatchNorm2d", "GroupNorm(32)", "SN torch ops (ours)", "SN (ours)"]
        for layout, fmt in (("", torch.contiguous_format), (", channels_last", torch.channels_last)):
            g_rows = bench_layers(device, args.repeats, shapes, dtype, names=g_names, memory_format=fmt, graphs=True)
            g_train = print_table(g_rows, "train", "time", g_names, f"train, CUDA graph replay{layout} (device time)")
            g_eval = print_table(g_rows, "eval", "time", g_names, f"eval, CUDA graph replay{layout} (device time)")
            summary.append(f"CUDA graphs{layout}: train median {g_train['SN (ours)']:.2f}x BN (max "
                           f"{max(r[('train', 'SN (ours)')] / r[('train', 'BatchNorm2d')] for r in g_rows):.2f}x), "
                           f"eval {g_eval['SN (ours)']:.2f}x BN")
    if DIRECT in LAYERS:
        summary.append(f"direct launch train median {train[DIRECT]:.2f}x BN, eval {evalr[DIRECT]:.2f}x BN")
    summary.append(f"torch ops path train median {train['SN torch ops (ours)']:.2f}x BN, eval "
                   f"{evalr['SN torch ops (ours)']:.2f}x BN, channels_last train {cl_train['SN torch ops (ours)']:.2f}x "
                   f"BN, eval {cl_eval['SN torch ops (ours)']:.2f}x BN")
    if args.compile:
        for kind, table in (("train", train), ("eval", evalr)):
            summary.append(f"compiled ({args.compile_mode}) {kind} median {table['SN compiled (ours)']:.2f}x BN "
                           f"({table['SN compiled (ours)'] / table['BatchNorm2d compiled']:.2f}x compiled BN)")
    if not args.no_e2e:
        ratio = bench_end_to_end(device, max(5, args.repeats // 2), compile_too=args.compile)
        summary.append(f"ResNet-20 images/s {ratio:.2f}x BN")
        deploy = bench_eval_deploy(device, max(5, args.repeats // 2))
        summary.append("ResNet-20 eval images/s " + ", ".join(f"{k} {v:.2f}x BN" for k, v in deploy.items()))
        if device.type == "cuda":
            ratios = bench_resnet50(device, max(5, args.repeats // 2),
                                    variants=dict(RESNET50_VARIANTS, **{"sn direct launch": "direct"}))
            summary.append("ResNet-50 images/s " + ", ".join(f"{k} {v:.2f}x BN" for k, v in ratios.items()))
            ratios = bench_resnet50(device, max(5, args.repeats // 2), graphs=True)
            summary.append("ResNet-50 images/s from CUDA graphs " +
                           ", ".join(f"{k} {v:.2f}x BN" for k, v in ratios.items()))
    print("\nSummary (ours): " + "; ".join(summary))


if __name__ == "__main__":
    main()
