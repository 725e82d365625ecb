#!/usr/bin/env bash
# The GPU checks of the Triton path in one command, for a machine with an NVIDIA GPU and a Python
# that has torch (and triton) already (no set-up, nothing downloaded). Expect a few minutes, much of
# them Triton and torch.compile compiling kernels on first use.
#
#   bash scripts/gpu_check.sh [OUTPUT_DIR]     # default gpu-check/; PYTHON=... to pick the interpreter
#   STEPS="tests bench-float32" bash scripts/gpu_check.sh $OUT   # some of the steps below only
#
# 1. tests: tests/test_sn_triton_launch.py (first: it is short), tests/test_sn_cuda.py and
#    tests/test_sn_triton.py on the GPU (sn.triton_launch's direct launches against Triton's own,
#    the Triton kernels against float64 maths and the PyTorch-operation path, no host
#    synchronization per step, a training step replayed from a CUDA graph);
# 2. bench-float32: bench/bench_sn.py --device cuda: BN, GN, SN on PyTorch operations and as it
#    runs by default (the Triton kernels; eager also with sn.triton_launch on), at the CPU shapes
#    and ResNet-50's stage shapes, contiguous and channels_last, eager and replayed from CUDA
#    graphs, a ResNet-50 step;
# 3. host-profile: bench/host_profile.py, where a layer's host time goes (cProfile, launch costs)
#    and its device time (each kernel's, from torch.profiler);
# 4. bench-bfloat16: the tables in bfloat16 (the input; parameters float32, as under autocast);
# 5. bench-compiled: torch.compile'd BN and SN (the Triton kernels as custom operators) beside them at
#    two shapes (every shape would take long);
# 6. bench-compiled-graphs: the same with mode="reduce-overhead" (compiled graphs replayed from CUDA graphs).
# Each step's output goes to OUTPUT_DIR/<step>.log; a failing or overlong step does not stop the others.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
OUTDIR="${1:-gpu-check}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" \
    | tee "$OUTDIR/device.log" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv \
    >>"$OUTDIR/device.log" 2>&1
status=0
STEPS=" ${STEPS:-tests bench-float32 host-profile bench-bfloat16 bench-compiled bench-compiled-graphs} "  # (some: STEPS="tests")
step() {  # step NAME SECONDS COMMAND...: COMMAND's output to OUTDIR/NAME.log, killed after SECONDS
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    [[ "$STEPS" == *" $name "* ]] || return 0
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUTDIR/$name.log"
    [ "$rc" = 0 ] || status=1
}
# (limits: the steps took 150 s (cut off), 85, 17, 13 (failed) and 83 s on an H200 machine with a slow
# host on 2026-12-04; all six do not fit one 10-minute call: run STEPS="tests bench-float32", then the
# rest. SCALE=2 doubles every limit.)
S=${SCALE:-1}
step tests $((360 * S)) "$PY" -m pytest -q -p no:cacheprovider tests/test_sn_triton_launch.py tests/test_sn_cuda.py \
    tests/test_sn_triton.py
step bench-float32 $((240 * S)) "$PY" -m bench.bench_sn --device cuda --repeats 25
step host-profile $((60 * S)) "$PY" -m bench.host_profile
step bench-bfloat16 $((90 * S)) "$PY" -m bench.bench_sn --device cuda --repeats 25 --dtype bfloat16 --no-e2e
step bench-compiled $((150 * S)) "$PY" -m bench.bench_sn --device cuda --repeats 25 --compile --no-e2e \
    --shapes 8x64x56,32x256x56
step bench-compiled-graphs $((150 * S)) "$PY" -m bench.bench_sn --device cuda --repeats 25 --compile \
    --compile-mode reduce-overhead --no-e2e --shapes 8x64x56,32x256x56
exit $status
