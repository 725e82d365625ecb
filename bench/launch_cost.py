"""The host's cost of launching each Triton kernel of a training step, Triton's own path
(``kernel[grid](...)``) against ``sn.triton_launch``'s direct launches (keyed by a look at every
argument, and by the call site as ``sn.triton_path`` keys them), measured without a GPU.

    .venv/bin/python -m bench.launch_cost [--calls 3000]

Triton's driver is replaced by :class:`RecordingDriver`, which compiles for an sm_90 GPU (the
real compiler and ptxas, as ``tests/test_sn_triton_compile.py`` uses them) and hands each launch
to a launcher that records its arguments instead of calling the CUDA driver. Everything Triton
does in Python before that call is timed, as is everything ``sn.triton_launch`` does; the CUDA
driver's own launch (a few microseconds on a GPU machine) is not. The launches are those of
``sn.triton_path`` for a (32, 256, 14, 14) float32 input mixing IN, LN and BN.
"""
import argparse
import contextlib
import gc
import statistics
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from sn import triton_kernels as K
from sn import triton_launch as SNL


class _RecordingLauncher:
    """Stands in for Triton's CUDA launcher: appends every launch's arguments to ``calls`` (unless
    that is None)."""

    calls = None

    def __init__(self, src, metadata):
        self.src, self.metadata = src, metadata

    def __call__(self, *args):
        if _RecordingLauncher.calls is not None:
            _RecordingLauncher.calls.append(args)


class _Utils:
    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}

    def load_binary(self, name, kernel, shared, device):
        # (module, function, registers, spills[, threads]: never used to launch; Triton < 3.4 takes four)
        return (1, 1, 0, 0, 1024) if SNL._release(triton.__version__) >= (3, 4) else (1, 1, 0, 0)

    def unload_module(self, module):
        pass


class RecordingDriver:
    """Triton's active driver while no GPU is there: an sm_``arch`` target (90 unless told),
    device 0, stream 0."""

    def __init__(self, arch: int = 90):
        self.utils = _Utils()
        self.launcher_cls = _RecordingLauncher
        self.arch = arch

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def recording_driver(record=True, arch: int = 90):
    """Within the block Triton compiles sn's kernels for sm_``arch`` and records their launches
    (the argument lists its launcher gets) in the yielded list (``record``; else drops them). On
    leaving, the programs compiled for the stand-in driver are dropped from Triton's and
    ``sn.triton_launch``'s in-memory caches, so that no later launch on a real GPU can find one.
    Works with Triton 3.0 to 3.8 (``bench.triton_versions`` runs it under each)."""
    if torch.cuda.is_available():
        raise RuntimeError("recording_driver stands in for a GPU; this machine has one: measure on it instead")
    # (Triton >= 3.5 keeps the driver in `_active`, made on first read of `active`, which needs a GPU)
    slot = "_active" if hasattr(driver, "_active") else "active"
    before, compiled = getattr(driver, slot), dict(SNL._COMPILED)
    driver.set_active(RecordingDriver(arch))
    _RecordingLauncher.calls = [] if record else None
    try:
        yield _RecordingLauncher.calls
    finally:
        _RecordingLauncher.calls = None
        for kernel in K.KERNELS:
            (kernel.device_caches if hasattr(kernel, "device_caches") else kernel.cache).clear()
        SNL._COMPILED.clear()
        gc.collect()  # (the programs unload through the driver that loaded them)
        setattr(driver, slot, before)
        SNL._COMPILED.update(compiled)


@contextlib.contextmanager
def recorded_launches():
    """Within the block the kernels of ``sn.triton_kernels`` record their launches instead of
    running: ``(kernel, grid, args, constexprs)`` in the yielded list."""
    launches = []

    class Record:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, grid, args, kwargs))

    for kernel in K.KERNELS:
        setattr(K, kernel.__name__, Record(kernel))
    try:
        yield launches
    finally:
        for kernel in K.KERNELS:
            setattr(K, kernel.__name__, kernel)


def step_launches():
    """``(kernel, grid, args, constexprs)`` of every launch of one training step of
    ``sn.triton_path`` at (32, 256, 14, 14), float32, IN/LN/BN (recorded, not run)."""
    from sn import triton_path as TP
    from sn.config import Config

    x3 = torch.randn(32, 256, 196)
    c = x3.shape[1]
    logits, ones = torch.zeros(3), torch.ones(c)
    config = Config(("in", "ln", "bn"), 1, 1, 1e-5)
    with recorded_launches() as launches:
        _, saved, _ = TP.forward(x3, logits, logits, ones, ones, config, None, None,
                                 (torch.zeros(c), torch.ones(c), 0.1, 1.0), save=True)
        TP.backward(torch.randn_like(x3), x3, logits, logits, ones, config, None, saved)
    return launches


def _median_us(fn, calls):
    for _ in range(100):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="timed launches per figure (default 3000)")
    args = parser.parse_args(argv)
    launches = step_launches()
    rows, totals = [], [0.0, 0.0, 0.0]
    with recording_driver():
        for kernel, grid, kargs, kwargs in launches:
            kernel[grid](*kargs, **kwargs)  # (compiled, or found in Triton's cache on disk)
            own = _median_us(lambda: kernel[grid](*kargs, **kwargs), args.calls)
            with SNL.direct():
                direct = _median_us(lambda: SNL.launch(kernel, grid, *kargs, **kwargs), args.calls)
                site = ("bench", kernel.__name__)  # (a call site's key: computed once for its launches)
                at = _median_us(lambda: SNL.launch_at(site, kernel, grid, *kargs, **kwargs), args.calls)
            rows.append((kernel.__name__, len(kargs), len(kwargs), own, direct, at))
            for i, t in enumerate((own, direct, at)):
                totals[i] += t
    print("### host time per launch before the CUDA driver's call, no GPU (median us)\n")
    print("| kernel | arguments (+ constexprs) | Triton's path | direct, every argument looked at | "
          "direct, keyed by call site |")
    print("|---|---|---|---|---|")
    for name, n_args, n_const, own, direct, at in rows:
        print(f"| {name} | {n_args} (+{n_const}) | {own:.1f} | {direct:.1f} ({direct / own:.2f}x) | "
              f"{at:.1f} ({at / own:.2f}x) |")
    print(f"| a training step ({len(rows)} launches) | | {totals[0]:.1f} | {totals[1]:.1f} "
          f"({totals[1] / totals[0]:.2f}x) | {totals[2]:.1f} ({totals[2] / totals[0]:.2f}x) |")
    (own, direct), (own_eval, direct_eval) = step_host_time(args.calls // 10)
    print(f"\nOne layer on the host, (32, 256, 14, 14), IN/LN/BN (autograd, sn's Python, the launches): a training "
          f"step {own:.0f} us on Triton's path, {direct:.0f} us direct as sn.triton_path launches "
          f"({direct / own:.2f}x); an eval call {own_eval:.0f} us, {direct_eval:.0f} us "
          f"({direct_eval / own_eval:.2f}x)")
    return rows


def step_host_time(calls):
    """Median host time of one training step of :class:`sn.triton_path.TritonSwitchNorm` and of
    one eval call of :func:`sn.triton_path.switch_norm` (running statistics, no gradient) on CPU
    tensors, the launches dropped by the stand-in driver: ``((Triton's path, direct) for training,
    (the same) for eval)``."""
    from sn import triton_path as TP
    from sn.config import Config

    c = 256
    x3 = torch.randn(32, c, 196, requires_grad=True)
    grad = torch.randn_like(x3)
    logits = [torch.zeros(3, requires_grad=True) for _ in range(2)]
    affine = [torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)]
    config = Config(("in", "ln", "bn"), 1, 1, 1e-5)
    running = (torch.zeros(c), torch.ones(c), 0.1, 1.0)

    def step():
        for t in (x3, *logits, *affine):  # (the gradients are taken, not added: no arithmetic on the CPU)
            t.grad = None
        out, = TP.TritonSwitchNorm.apply(x3, *logits, *affine, config, None, None, running)
        out.backward(grad)

    def evaluate():
        with torch.no_grad():
            TP.switch_norm(x3, *logits, *affine, config, running[0], running[1])

    with recording_driver(record=False):
        own = [_median_us(step, calls), _median_us(evaluate, calls)]
        with SNL.direct():
            direct = [_median_us(step, calls), _median_us(evaluate, calls)]
    return (own[0], direct[0]), (own[1], direct[1])


if __name__ == "__main__":
    main()
