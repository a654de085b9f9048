#!/usr/bin/env bash
# Sets up everything torch_patsparse needs on a fresh Debian machine, idempotently:
#   Debian packages (Fashion-MNIST; for tests also the aarch64 cross compiler, qemu-user, cmake),
#   a virtual environment (.venv, or $PATSPARSE_VENV) with torch==2.13.0 and the dev requirements
#   (for tests also executorch==1.4.0, requirements-executorch.txt),
#   and the native extension built in place (pip install -e . --no-build-isolation).
# Usage: scripts/setup.sh [run|test]   (default: test)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PURPOSE="${1:-test}"
VENV="${PATSPARSE_VENV:-$ROOT/.venv}"

apt_missing=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_missing+=(dataset-fashion-mnist)
if [ "$PURPOSE" = test ]; then
  command -v cmake >/dev/null || apt_missing+=(cmake)
  command -v aarch64-linux-gnu-g++ >/dev/null || apt_missing+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null || apt_missing+=(qemu-user)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${apt_missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${apt_missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.patsparse-reqs"
reqs=("$ROOT/requirements-dev.txt")
# Tests also cover the ExecuTorch route: the optional executorch package (~1.5 GB, pinned to torch's release).
if [ "$PURPOSE" = test ]; then reqs+=("$ROOT/requirements-executorch.txt"); fi
want="$(cat "$ROOT/requirements.txt" "${reqs[@]}" | sha1sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing Python requirements: ${reqs[*]##*/}"
  for r in "${reqs[@]}"; do
    "$PY" -m pip install -q --disable-pip-version-check -r "$r"
  done
  echo "$want" > "$stamp"
fi

echo "== building torch_patsparse (native extension)"
cd "$ROOT"
MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
"$PY" -c "import torch_patsparse as ps; print('torch_patsparse', ps.__version__, '| torch', __import__('torch').__version__, '| CPU kernel paths:', ps.ops.supported_isas())"
