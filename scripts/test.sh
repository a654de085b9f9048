#!/usr/bin/env bash
# All tests from a fresh clone: set up, then the C++ core tests (ctest, plain and ASan + UBSan), the NEON kernel under
# qemu (arm/test.sh), the nvcc compile check of the CUDA sources, and the pytest suite (ExecuTorch tests included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
cd "$ROOT"
export PATH="${PATSPARSE_VENV:-$ROOT/.venv}/bin:$PATH"
for check in scripts/test_cpp.sh arm/test.sh csrc/cuda/check_compile.sh; do
  if [ -f "$check" ]; then
    echo "== $check"
    bash "$check"
  fi
done
echo "== pytest"
# setup.sh test installed executorch: its tests (tests/test_executorch.py) must run, not skip.
export PATSPARSE_REQUIRE_EXECUTORCH=1
exec python -m pytest tests "$@"
