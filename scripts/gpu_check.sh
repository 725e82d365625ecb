#!/usr/bin/env bash
# The GPU checks of the Triton path in one command, for a machine with an NVIDIA GPU and a Python
# that has torch (and triton) already (no set-up, nothing downloaded). Not yet run on a GPU: expect
# a few minutes, most of them Triton and torch.compile compiling kernels on first use.
#
#   bash scripts/gpu_check.sh [OUTPUT_DIR]     # default gpu-check/; PYTHON=... to pick the interpreter
#
# 1. tests/test_sn_cuda.py and tests/test_sn_triton.py on the GPU (the Triton kernels against
#    float64 maths and the PyTorch-operation path, no host synchronization per step);
# 2. bench/bench_sn.py --device cuda: BN, GN, SN on PyTorch operations and on Triton, at the
#    CPU shapes and ResNet-50's stage shapes, contiguous and channels_last, a ResNet-50 step;
# 3. the same tables in bfloat16 (the input; parameters float32, as under autocast);
# 4. torch.compile'd BN and SN beside them at two shapes (compiling every shape would take long).
# Each step's output goes to OUTPUT_DIR/*.log; a failing step does not stop the others.
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
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_sn_cuda.py tests/test_sn_triton.py 2>&1 \
    | tee "$OUTDIR/tests.log" || status=1
"$PY" -m bench.bench_sn --device cuda --repeats 25 2>&1 | tee "$OUTDIR/bench-float32.log" || status=1
"$PY" -m bench.bench_sn --device cuda --repeats 25 --dtype bfloat16 --no-e2e 2>&1 \
    | tee "$OUTDIR/bench-bfloat16.log" || status=1
"$PY" -m bench.bench_sn --device cuda --repeats 25 --compile --no-e2e --shapes 8x64x56,32x256x56 2>&1 \
    | tee "$OUTDIR/bench-compiled.log" || status=1
exit $status
