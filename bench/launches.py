"""Device operations per training step and eval call of each GPU path, counted without a GPU.

    .venv/bin/python -m bench.launches            # the table, at one shape (counts do not depend on it)
    .venv/bin/python -m bench.launches --detail   # and which operations they are

On small and mid-sized maps a GPU's time per normalization layer is mostly its kernel launches
(a few microseconds each), so their number predicts where a path is launch-bound. PyTorch
operations are counted as they dispatch on the ``meta`` device, which takes the branches a CUDA
tensor takes (views and allocations launch nothing and are left out); the Triton kernels are
counted as they launch, run in Triton's interpreter on CPU tensors. A training step is the
forward and ``torch.autograd.grad`` of the output for the input and every parameter (no
gradient accumulation); eval is one forward under ``no_grad`` with running statistics.
"""
import argparse
import collections
import os
import sys

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import sn

# aten operations that launch no kernel: views, metadata and allocations
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "view", "reshape", "_reshape_alias", "as_strided",
             "select", "detach", "alias", "unsqueeze", "squeeze", "t", "transpose", "expand", "_unsafe_view", "slice",
             "permute", "split", "unbind", "lift_fresh"}


class DeviceOps(TorchDispatchMode):
    """Records every PyTorch operation that would launch a kernel, and (through
    :func:`counting_triton`) every Triton launch of ``sn.triton_kernels``, in order."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


class _CountedKernel:
    def __init__(self, kernel, ops):
        self.kernel, self.ops = kernel, ops

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.ops.append("triton:" + self.kernel.__name__)
            with _disable_current_modes():  # (the interpreter's own tensor traffic is not the device's)
                return self.kernel[grid](*args, **kwargs)
        return launch


class counting_triton:
    """Within the block, every launch of a kernel of ``sn.triton_kernels`` is appended to ``ops``."""

    def __init__(self, ops):
        self.ops = ops

    def __enter__(self):
        from sn import triton_kernels as K
        self.K = K
        for kernel in K.KERNELS:
            setattr(K, kernel.__name__, _CountedKernel(kernel, self.ops))
        return self

    def __exit__(self, *exc):
        for kernel in self.K.KERNELS:
            setattr(self.K, kernel.__name__, kernel)


def step_ops(layer: nn.Module, x: torch.Tensor, train: bool):
    """The device operations of one training step (forward and gradients) or eval call."""
    layer.train(train)
    grad = torch.ones_like(x)
    wanted = [x.requires_grad_(train)] + [p for p in layer.parameters() if train]
    for counted in (False, True):  # (a warm-up call first: lazy initialisation is not a step)
        mode = DeviceOps()
        with mode, counting_triton(mode.ops):
            with torch.set_grad_enabled(train):
                out = layer(x)
                if train:
                    torch.autograd.grad(out, wanted, grad)
    return mode.ops


LAYERS = {  # name: (constructor, device the operations are counted on)
    "BatchNorm2d": (nn.BatchNorm2d, "meta"),
    "GroupNorm(32)": (lambda c: nn.GroupNorm(32, c), "meta"),
    "SN torch ops (ours)": (lambda c: sn.SwitchNorm2d(c, implementation="torch"), "meta"),
    "SN triton (ours)": (lambda c: sn.SwitchNorm2d(c, implementation="triton"), "cpu"),
    "SN triton, +GN (ours)": (lambda c: sn.SwitchNorm2d(c, stats=("in", "ln", "bn", "gn"), num_groups=32,
                                                         implementation="triton"), "cpu"),
}


def count(shape=(8, 64, 7, 7)):
    """``{name: (train ops, eval ops)}`` for every layer of :data:`LAYERS`."""
    counts = {}
    for name, (make, device) in LAYERS.items():
        layer = make(shape[1]).to(device)
        x = torch.randn(shape).to(device)
        counts[name] = (step_ops(layer, x, True), step_ops(layer, x.detach(), False))
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detail", action="store_true", help="also list the operations of each path")
    args = parser.parse_args(argv)
    # Triton's interpreter runs the kernels on CPU tensors; it is chosen when they are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] != "1" or "sn.triton_kernels" in sys.modules and \
            not sys.modules["sn.triton_kernels"].KERNELS[0].__class__.__name__.startswith("Interpreted"):
        raise SystemExit("bench.launches counts Triton launches in Triton's interpreter, which must be on before "
                         "sn's kernels are defined: run it as its own command, without TRITON_INTERPRET=0")
    counts = count()
    base_train, base_eval = (len(ops) for ops in counts["BatchNorm2d"])
    print("### device operations (kernel launches) per call, ratio to BatchNorm2d\n")
    print("| layer | training step | eval call |")
    print("|---|---|---|")
    for name, (train, evl) in counts.items():
        print(f"| {name} | {len(train)} ({len(train) / base_train:.1f}x) | {len(evl)} ({len(evl) / base_eval:.1f}x) |")
    if args.detail:
        for name, (train, evl) in counts.items():
            for kind, ops in (("training step", train), ("eval call", evl)):
                tally = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in collections.Counter(ops).items())
                print(f"\n{name}, {kind}: {tally}")
    return counts


if __name__ == "__main__":
    main()
