#!/usr/bin/env bash
# Install modelserve with its test dependencies and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
