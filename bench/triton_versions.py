"""Whether sn's Triton kernels compile, and compute what they should, under Triton releases other
than the installed one. A GPU user's Triton is the one their torch ships: torch 2.4 (this
project's oldest) brings Triton 3.0, torch 2.14 Triton 3.8.

    .venv/bin/python -m bench.triton_versions [VERSION ...] [--cache DIR] [--no-interpreter]

For each version (default: 3.0.0 3.1.0 3.2.0 3.3.1 3.4.0 3.5.1 3.6.0 3.7.1 and the installed one),
``pip download`` fetches its wheel once into ``--cache``, which is unpacked there; then, in a
process with that release first on the path:

1. every distinct launch ``sn.triton_path`` makes (:func:`path_launches`: 3 dtypes, both
   layouts, L = 15/196/3136, five sets of statistics, training and eval, with and without
   ``dx``) goes through that release's own launch path (``kernel[grid](...)``: its binder,
   compiler and ptxas) for sm_80 and sm_90, with ``bench.launch_cost``'s stand-in for the CUDA
   driver, and each program's PTX through that release's ptxas: programs, failures, the most
   registers, and register spills;
2. ``tests/test_sn_triton.py`` runs in that release's interpreter (``TRITON_INTERPRET=1``) on
   CPU tensors against float64 (with numpy ``--numpy``: the interpreters of Triton 3.2 to 3.5
   fail on numpy 2.4's stricter scalar conversion, an incompatibility of theirs);
3. ``tests/test_sn_triton_launch.py`` runs there: ``sn.triton_launch``'s direct launches against
   that release's binder and launcher protocol (with the stand-in driver), or, under a release
   outside :data:`sn.triton_launch.VERIFIED`, its fallback to Triton's own path.

It needs the package index (``pip download``), so it is a maintainer's check, not a test;
``tests/test_bench.py`` runs step 1 under the installed Triton.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("3.0.0", "3.1.0", "3.2.0", "3.3.1", "3.4.0", "3.5.1", "3.6.0", "3.7.1")
ARCHS = (80, 90)
CONFIGS = [  # (stats, groups, devices, training): every branch of the kernels' constexpr flags
    (("in", "ln", "bn"), 1, 1, True),
    (("in", "ln", "bn", "gn"), 32, 2, True),  # (every flag on)
    (("in", "ln", "bn"), 1, 1, False),  # eval: running statistics
    (("ln", "gn"), 4, 1, True),
    (("bn",), 1, 1, True),
]


def path_launches():
    """``(kernel, grid, args, constexprs)`` of every distinct kind of launch ``sn.triton_path``
    makes (recorded, not run): float32, float16 and bfloat16; contiguous and channels_last;
    L = 15, 196 and 3136; every set of statistics on float32 contiguous inputs and the one with
    every flag on elsewhere; the backward with and without ``dx``."""
    import torch

    from bench.launch_cost import recorded_launches
    from sn import triton_path as TP
    from sn.config import Config

    with recorded_launches() as launches:
        for dtype in TP.DTYPES:
            for shape in ((2, 64, 3, 5), (4, 256, 14, 14), (32, 64, 56, 56)):
                for layout in (torch.contiguous_format, torch.channels_last):
                    x = torch.empty(shape, dtype=dtype).contiguous(memory_format=layout)
                    x3 = x.reshape(shape[0], shape[1], -1)  # (the (N, C, L) view sn.functional makes)
                    every = dtype == torch.float32 and layout == torch.contiguous_format
                    for stats, groups, devices, training in CONFIGS if every else CONFIGS[1:2]:
                        c = shape[1]
                        logits = torch.zeros(len(stats))
                        affine = torch.ones(c, dtype=dtype)
                        config = Config(stats, groups, devices if training else 1, 1e-5)
                        running = (torch.zeros(c), torch.ones(c))
                        bn = (None, None) if training or "bn" not in stats else running
                        update = (*running, 0.1, 1.01) if training and "bn" in stats else None
                        _, saved, _ = TP.forward(x3, logits, logits, affine, affine, config, *bn, update, save=True)
                        for need_dx in (True, False):  # (without dx the logits' gradients take a kernel of their own)
                            TP.backward(torch.empty_like(x3), x3, logits, logits, affine, config, bn[0], saved,
                                        need_dx=need_dx)
    return launches


def ptxas_report(ptx: str, tmp: Path) -> str:
    """ptxas's own account of a program (registers, spill stores and loads), by the ptxas that
    ships with the Triton in use."""
    import triton

    path = tmp / "kernel.ptx"
    path.write_text(ptx)
    tool = Path(triton.backends.nvidia.__path__[0]) / "bin" / "ptxas"
    arch = re.search(r"^\.target (\S+)", ptx, re.M).group(1)  # (sm_80, sm_90a: the arch Triton wrote for)
    done = subprocess.run([str(tool), "-v", f"--gpu-name={arch}", str(path), "-o", str(tmp / "kernel.cubin")],
                          capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def compile_check(archs=ARCHS) -> dict:
    """Step 1 under the Triton in use: ``{"triton", "programs", "failures", "registers" (the most,
    per kernel), "spills" (kernels that spill), "errors"}``."""
    import triton

    from bench.launch_cost import recording_driver

    launches = path_launches()
    result = {"triton": triton.__version__, "programs": 0, "failures": 0, "registers": {}, "spills": [],
              "errors": []}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            seen = set()
            with recording_driver(record=False, arch=arch):
                for kernel, grid, args, kwargs in launches:
                    name = f"{kernel.__name__} sm_{arch}"
                    try:
                        compiled = kernel[grid](*args, **kwargs)
                    except Exception as err:  # (reported, with the release: this is what the check is for)
                        result["failures"] += 1
                        result["errors"].append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                        continue
                    if id(compiled) in seen:  # (the same specialization: the same program)
                        continue
                    seen.add(id(compiled))
                    report = ptxas_report(compiled.asm["ptx"], Path(tmp))
                    registers = int(re.search(r"Used (\d+) registers", report).group(1))
                    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
                    result["programs"] += 1
                    result["registers"][name] = max(result["registers"].get(name, 0), registers)
                    if spills.groups() != ("0", "0") and name not in result["spills"]:
                        result["spills"].append(name)
                compiled = None  # (programs unload through the driver that loaded them: none may outlive it)
    return result


def _wheel_dir(package: str, version: str, cache: Path) -> Path:
    """The unpacked wheel of ``package==version`` (downloaded into ``cache`` the first time)."""
    target = cache / f"{package}-{version}"
    if (target / package).is_dir():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = list(wheels.glob(f"{package}-{version}-*.whl"))
    if not found:
        env = dict(os.environ, PIP_CONSTRAINT="")  # (the project's constraints pin the installed versions)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
                        f"{package}=={version}"], check=True, env=env)
        found = list(wheels.glob(f"{package}-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as wheel:
        for info in wheel.infolist():
            path = wheel.extract(info, target)
            mode = info.external_attr >> 16  # (the file's mode bits: ptxas must stay executable)
            if mode & 0o777:
                os.chmod(path, mode & 0o777)
    return target


def _tests(path: str, test_file: str, interpreted: bool) -> str:
    """The summary line of ``pytest test_file`` with ``path`` first on the path (and Triton's
    interpreter on or off), with the first error where any test failed."""
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("TRITON_INTERPRET", None)
    if interpreted:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    summary = lines[-1].strip("= ") if lines else f"exit {done.returncode}"
    if done.returncode:
        first = re.search(r"^E\s+(.*)$", done.stdout, re.M)
        summary += f" (first error: {first.group(1)[:200]})" if first else ""
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", help=f"Triton releases (default: {' '.join(VERSIONS)} and the "
                                                    f"installed one)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "switchnorm" / "triton-wheels",
                        help="where wheels are downloaded and unpacked")
    parser.add_argument("--numpy", default="2.2.6", help="numpy for the other releases' interpreters (default 2.2.6)")
    parser.add_argument("--no-interpreter", action="store_true", help="only compile (step 1): no test runs")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # (step 1 in this process)
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(compile_check()))
        return None
    import triton

    import platform

    import torch

    versions = args.versions or [*VERSIONS, triton.__version__]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"# sn's Triton kernels under Triton releases: torch {torch.__version__}, Python {platform.python_version()}, "
          f"installed Triton {triton.__version__}, numpy {args.numpy} for the others' interpreters, commit "
          f"{commit.strip() or 'unknown'}\n")
    rows = []
    for version in dict.fromkeys(versions):
        path = ""
        if version != triton.__version__:
            path = os.pathsep.join(str(_wheel_dir(p, v, args.cache)) for p, v in (("triton", version),
                                                                                    ("numpy", args.numpy)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (path, str(ROOT)))))
        env.pop("TRITON_INTERPRET", None)
        done = subprocess.run([sys.executable, "-m", "bench.triton_versions", "--inner"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            rows.append((version, None, f"could not run: {tail}", ""))
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["triton"] != version:
            raise RuntimeError(f"asked for Triton {version}, the process ran {result['triton']}")
        interpreted = "" if args.no_interpreter else _tests(path, "tests/test_sn_triton.py", True)
        direct = "" if args.no_interpreter else _tests(path, "tests/test_sn_triton_launch.py", False)
        rows.append((version, result, interpreted, direct))
    print("| Triton | programs compiled (sm_80, sm_90) | failures | most registers | spills | interpreter tests | "
          "direct-launch tests |")
    print("|---|---|---|---|---|---|---|")
    for version, result, interpreted, direct in rows:
        if result is None:
            print(f"| {version} | | | | | {interpreted} | |")
            continue
        most = max(result["registers"].items(), key=lambda item: item[1]) if result["registers"] else ("-", 0)
        print(f"| {version} | {result['programs']} | {result['failures']} | {most[1]} ({most[0]}) | "
              f"{', '.join(result['spills']) or 'none'} | {interpreted or '-'} | {direct or '-'} |")
        for error in result["errors"][:5]:
            print(f"|  | {error} | | | | | |")
    return rows


if __name__ == "__main__":
    main()
