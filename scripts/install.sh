#!/usr/bin/env bash
# Create ./.venv (if missing) and install modelserve into it, with the CPU build of torch first.
# Usage: scripts/install.sh [extra]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# A bare "torch" requirement would pull a multi-GB CUDA build; the CPU wheel is pinned first.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if [ -n "${1:-}" ]; then .venv/bin/python -m pip install -q -e ".[$1]"; else .venv/bin/python -m pip install -q -e .; fi
