#!/usr/bin/env bash
# Cross-builds the torch-free kernel core and its C++ tests for aarch64 (NEON kernel included) and
# runs them under qemu-aarch64, in two lanes:
#   g++ (build/arm):         every test program: tests/cpp/test_kernels (reference vs naive dense conv
#                            on the shape matrix; every ISA path incl. NEON vs the reference), the other
#                            tests/cpp programs, and arm/tests/test_neon (every NEON tile against the
#                            tile contract, NEON random sweep, filter-group edge cases);
#   clang-19 (build/arm-clang, the Android NDK's compiler): test_kernels and test_neon only (the
#                            NEON paths; keeps CI time small).
# Prints "arm/test.sh: N passed, M failed"; exits non-zero on any failure.
# Installs g++-aarch64-linux-gnu, qemu-user, cmake and clang-19 with apt-get when they are missing.
# Env: PATSPARSE_ARM_BUILD (g++ build dir, default build/arm), PATSPARSE_ARM_CLANG_BUILD (default
# build/arm-clang), JOBS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PATSPARSE_ARM_BUILD:-$ROOT/build/arm}"
CLANG_BUILD="${PATSPARSE_ARM_CLANG_BUILD:-$ROOT/build/arm-clang}"
SYSROOT=/usr/aarch64-linux-gnu

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v cmake >/dev/null || missing+=(cmake)
command -v clang++-19 >/dev/null || missing+=(clang-19)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== arm/test.sh: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
passed=0; failed=0

# lane BUILD_DIR TOOLCHAIN_FILE [TEST_PROGRAM...]: configures and builds (all tests when none are
# named), runs the test programs under qemu and adds their counts to passed / failed.
lane() {
  local build="$1" toolchain="$2"; shift 2
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$build" "${generator[@]}" -DCMAKE_TOOLCHAIN_FILE="$ROOT/arm/$toolchain" \
          -DCMAKE_BUILD_TYPE=Release -DPATSPARSE_WITH_TORCH=OFF -DPATSPARSE_BUILD_TESTS=ON >/dev/null
  fi
  echo "== arm/test.sh: building for aarch64 in ${build#$ROOT/} ($toolchain)"
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  cmake --build "$build" -j "${JOBS:-2}" "${targets[@]}"
  local tests="$*"
  [ -n "$tests" ] || tests=$(cd "$build" && ls test_* 2>/dev/null | sort)
  [ -n "$tests" ] || { echo "arm/test.sh: no test programs were built in $build"; failed=$((failed + 1)); return; }
  for t in $tests; do
    echo "== qemu-aarch64 $t (${build#$ROOT/})"
    set +e
    out="$(qemu-aarch64 -L "$SYSROOT" "$build/$t" 2>&1)"; rc=$?
    set -e
    echo "$out" | grep -v '^FAIL' | tail -n 3
    echo "$out" | grep '^FAIL' | head -n 20 || true
    line="$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n 1 || true)"
    f=0
    if [ -n "$line" ]; then
      p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\1/')
      f=$(echo "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\2/')
      passed=$((passed + p)); failed=$((failed + f))
    fi
    if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "$f" = 0 ]; }; then
      echo "$t exited with status $rc"; failed=$((failed + 1))
    fi
  done
}

lane "$BUILD" toolchain-aarch64-linux-gnu.cmake
lane "$CLANG_BUILD" toolchain-aarch64-clang.cmake test_kernels test_neon
echo "arm/test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
