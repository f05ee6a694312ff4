#!/usr/bin/env bash
# One GPU session (the lent H100): build from source against the machine's
# torch, run the whole test suite (CUDA cases included) and the CUDA
# benchmarks; logs and results go to $OUT (or ./gpu_out).
# Usage: bash benchmarks/gpu_run.sh [pytest-args...]
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CNNKERNELS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PY:-python3}
# The image's default g++ (/opt/gcc wrapper) produced an extension whose C++
# exceptions crashed the process (SIGSEGV on a TORCH_CHECK); the system g++
# works. Use it when present.
# (The image presets CXX to that wrapper, so override it.)
if [ -x /usr/bin/g++ ]; then export CXX=${CNNK_CXX:-/usr/bin/g++} CC=${CNNK_CC:-/usr/bin/gcc}; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
if [ "${SKIP_BUILD:-0}" != 1 ]; then $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }; fi
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m pytest tests -q -p no:logging -p no:cacheprovider "$@" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -5
grep -E "^FAILED|^ERROR" "$OUT/pytest.log" | head -20
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  $PY benchmarks/run.py --device cuda --ops "${BENCH_OPS:-all}" --out "$OUT" --no-chart 2> "$OUT/bench.err" | tee "$OUT/bench.log" | tail -60
fi
