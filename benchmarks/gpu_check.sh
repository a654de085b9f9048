#!/usr/bin/env bash
# One prepared run on a CUDA machine (written for the H200 machine: torch 2.11+cu130, nvcc 13, ninja,
# pytest, compute-sanitizer; no network). Builds the extension with the CUDA kernels, runs the CUDA
# tests, compute-sanitizer (memcheck, racecheck) on a smoke run, and the cuDNN comparison benchmark.
#
#   bash benchmarks/gpu_check.sh LOGDIR
#
# Writes into LOGDIR: env.log, build.log, import.log, pytest.log (+ pytest.xml), resources.log,
# memcheck.log, bench.log, cuda_bench.md (the table), racecheck.log, summary.txt (one line per step:
# rc and seconds). Exit status 0 only if every step passed. Every step has its own timeout and the
# whole run stops starting new steps after GPU_CHECK_BUDGET_S seconds (default 450), so it ends in
# well under 8 minutes even when something hangs. Needs `python3 -m pytest` (installed on that image;
# the script says so plainly and skips the test step if it is missing).
set -uo pipefail

LOGDIR="${1:?usage: bash benchmarks/gpu_check.sh LOGDIR}"
mkdir -p "$LOGDIR"
LOGDIR="$(cd "$LOGDIR" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
SUMMARY="$LOGDIR/summary.txt"
: > "$SUMMARY"
T0=$(date +%s)
status=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# step NAME TIMEOUT_S CMD...: runs CMD with a timeout (capped by what is left of the budget), output
# shown and kept in LOGDIR/NAME.log, result appended to summary.txt.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then
    echo "$name SKIPPED (time budget of ${BUDGET}s used up)" | tee -a "$SUMMARY"
    status=1
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local t=$(date +%s)
  echo "=== [$name] $* (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGDIR/$name.log"
  local rc=${PIPESTATUS[0]}
  local msg="$name rc=$rc $(($(date +%s) - t))s"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && msg="$msg (TIMED OUT)"
  echo "$msg" | tee -a "$SUMMARY"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

finish() {
  echo "=== summary ($(($(date +%s) - T0))s total, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo no-git))"
  cat "$SUMMARY"
  exit "$status"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  command -v nvcc && nvcc --version | tail -n 2; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(), \"cudnn\", torch.backends.cudnn.version())'; \
  $PY -m pytest --version || echo 'pytest: NOT INSTALLED (python3 -m pytest is required for the test step)'; \
  command -v compute-sanitizer || echo 'compute-sanitizer: not found'; nproc"

# Build in place (no pip, no network): CUDA kernels required, H200 = sm_90 only.
if ! step build 300 env PATSPARSE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 "$PY" setup.py build_ext --inplace; then
  echo "build failed: see $LOGDIR/build.log"
  finish
fi
step import 60 "$PY" -c "import torch, torch_patsparse
ok = torch._C._dispatch_has_kernel_for_dispatch_key('patsparse::pattern_conv2d', 'CUDA')
print('CUDA kernels registered:', ok)
assert ok and torch.cuda.is_available()" || finish

SO="$(ls "$ROOT"/torch_patsparse/_C*.so 2>/dev/null | head -n 1)"
if command -v cuobjdump >/dev/null && [ -n "$SO" ]; then
  step resources 30 bash -c "cuobjdump --dump-resource-usage '$SO' | grep -B1 -E 'REG|STACK' | grep -v '^--' | head -n 80"
fi

if "$PY" -m pytest --version >/dev/null 2>&1; then
  # pytest-timeout (on that image): one hanging test fails alone instead of eating the budget.
  to=""; "$PY" -c "import pytest_timeout" 2>/dev/null && to="--timeout=90"
  step pytest 240 "$PY" -m pytest tests/test_cuda.py -q -rfEs --tb=short $to -p no:cacheprovider \
    --junitxml="$LOGDIR/pytest.xml"
else
  echo "pytest SKIPPED: python3 -m pytest not installed (required for tests/test_cuda.py)" | tee -a "$SUMMARY"
  status=1
fi

if command -v compute-sanitizer >/dev/null; then
  # No caching allocator: each tensor its own cudaMalloc, so memcheck sees out-of-bounds accesses
  # that would otherwise land inside a pooled block.
  step memcheck 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    "$PY" benchmarks/bench_cuda.py --smoke
fi

step bench 200 "$PY" benchmarks/bench_cuda.py --reps 20 --out "$LOGDIR/cuda_bench.md"

if command -v compute-sanitizer >/dev/null; then
  step racecheck 75 compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 99 \
    "$PY" benchmarks/bench_cuda.py --smoke
fi
finish
