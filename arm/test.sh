#!/usr/bin/env bash
# Cross-builds the torch-free kernel core and its C++ tests for aarch64 (NEON kernel included) and
# runs them under qemu-aarch64: tests/cpp/test_kernels (reference vs naive dense conv on the shape
# matrix; every ISA path incl. NEON vs the reference) and arm/tests/test_neon (NEON random sweep,
# filter-group edge cases). Prints "arm/test.sh: N passed, M failed"; exits non-zero on any failure.
# Installs g++-aarch64-linux-gnu, qemu-user and cmake with apt-get when they are missing.
# Env: PATSPARSE_ARM_BUILD (build dir, default build/arm), JOBS (default 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PATSPARSE_ARM_BUILD:-$ROOT/build/arm}"
SYSROOT=/usr/aarch64-linux-gnu

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v cmake >/dev/null || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== arm/test.sh: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_TOOLCHAIN_FILE="$ROOT/arm/toolchain-aarch64-linux-gnu.cmake" \
        -DCMAKE_BUILD_TYPE=Release -DPATSPARSE_WITH_TORCH=OFF -DPATSPARSE_BUILD_TESTS=ON >/dev/null
fi
echo "== arm/test.sh: building for aarch64 in ${BUILD#$ROOT/}"
cmake --build "$BUILD" -j "${JOBS:-2}"

passed=0; failed=0
tests=$(cd "$BUILD" && ls test_* 2>/dev/null | sort)
[ -n "$tests" ] || { echo "arm/test.sh: no test programs were built"; exit 1; }
for t in $tests; do
  echo "== qemu-aarch64 $t"
  set +e
  out="$(qemu-aarch64 -L "$SYSROOT" "$BUILD/$t" 2>&1)"; rc=$?
  set -e
  echo "$out" | grep -v '^FAIL' | tail -n 3
  echo "$out" | grep '^FAIL' | head -n 20 || true
  line="$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n 1 || true)"
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\2/')
    passed=$((passed + p)); failed=$((failed + f))
  fi
  if [ $rc -ne 0 ] && { [ -z "$line" ] || [ "${f:-0}" = 0 ]; }; then
    echo "$t exited with status $rc"; failed=$((failed + 1))
  fi
done
echo "arm/test.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
