#!/usr/bin/env bash
# The main job from a fresh clone: set up, then compress a real model end to end
# (python -m torch_patsparse; extra arguments are passed through, e.g. --quick).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" run
cd "$ROOT"
exec "${PATSPARSE_VENV:-$ROOT/.venv}/bin/python" -m torch_patsparse "$@"
