#!/usr/bin/env bash
# C++ tests of the torch-free kernel core (ctest), built with CMake (no libtorch needed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PATSPARSE_CMAKE_BUILD:-$ROOT/build/cmake-core}"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPATSPARSE_WITH_TORCH=OFF >/dev/null
cmake --build "$BUILD" -j2
ctest --test-dir "$BUILD" --output-on-failure
