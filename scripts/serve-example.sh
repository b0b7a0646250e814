#!/usr/bin/env bash
# Install modelserve, build the bundled simple_linear example and serve it on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
mkdir -p model_store
.venv/bin/python examples/simple_linear/build.py --export-path model_store
.venv/bin/modelserve --start --model-store model_store --models simple_linear=simple_linear.mar --disable-token-auth
echo
echo "Try it:  curl -X POST http://127.0.0.1:8080/predictions/simple_linear -H 'Content-Type: text/plain' -d 5.0"
echo "Stop it: .venv/bin/modelserve --stop"
