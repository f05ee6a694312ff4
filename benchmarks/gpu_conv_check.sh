#!/usr/bin/env bash
# Lent-GPU session, convolution focus: build against the machine's torch,
# report the implicit-GEMM kernels' resources, run the CUDA convolution
# tests (TESTS / TESTK choose others), then the CUDA benchmarks of BENCH_OPS
# (default conv). Logs go to $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CNNKERNELS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
echo "build: $(( $(date +%s) - t0 )) s"
objs=$(ls build/temp*/csrc/cuda/conv_*.o 2>/dev/null)
[ -n "$objs" ] && for o in $objs; do cuobjdump --dump-resource-usage "$o" 2>&1; done | grep -A1 "2ig" \
  | grep -o "Function [^:]*\|REG:[0-9]*\|STACK:[0-9]*\|SHARED:[0-9]*\|LOCAL:[0-9]*" | paste -s -d' ' \
  | sed 's/Function/\nFunction/g' | cut -c1-200 | tee "$OUT/resources.txt"
# TESTS=tests TESTK= runs the whole suite
python3 -m pytest ${TESTS:-tests/test_conv.py} -q -p no:cacheprovider -k "${TESTK-cuda}" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -4 "$OUT/pytest.log"; grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.log" | head -20
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  python3 benchmarks/run.py --device cuda --ops "${BENCH_OPS:-conv}" --out "$OUT" --no-chart ${BENCH_ARGS:-} 2> "$OUT/bench.err" | tee "$OUT/bench.log" | grep -v "^wrote" | cut -c1-150 | tail -${BENCH_TAIL:-60}
  tail -3 "$OUT/bench.err"
fi
