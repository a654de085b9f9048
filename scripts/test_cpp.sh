#!/usr/bin/env bash
# C++ tests of the torch-free kernel core (ctest), built with CMake (no libtorch needed), twice:
# a Release tree, then an ASan + UBSan tree (PATSPARSE_SANITIZE=ON, RelWithDebInfo) in which any
# sanitizer report aborts the test, so it fails CI. PATSPARSE_SKIP_SANITIZE=1 skips the second lane.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PATSPARSE_CMAKE_BUILD:-$ROOT/build/cmake-core}"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPATSPARSE_WITH_TORCH=OFF >/dev/null
cmake --build "$BUILD" -j2
ctest --test-dir "$BUILD" --output-on-failure

if [ "${PATSPARSE_SKIP_SANITIZE:-0}" != "1" ]; then
  echo "== C++ core tests under ASan + UBSan"
  ASAN_BUILD="${PATSPARSE_ASAN_BUILD:-$ROOT/build/cmake-asan}"
  cmake -S "$ROOT" -B "$ASAN_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPATSPARSE_WITH_TORCH=OFF \
    -DPATSPARSE_SANITIZE=ON >/dev/null
  cmake --build "$ASAN_BUILD" -j2
  # Belt and braces next to -fno-sanitize-recover=all: stop at the first report, with a stack.
  ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    ctest --test-dir "$ASAN_BUILD" --output-on-failure
fi
