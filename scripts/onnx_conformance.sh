#!/usr/bin/env bash
# ONNX's node test cases of the supported ops through `tessera forward`: installs onnx 1.22.0 (and
# numpy) into .venv-onnx, builds tessera (debug unless TESSERA=path is given) and prints passed /
# failed / unsupported. The cases come from the onnx wheel; none is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-onnx/bin/python ] || python3 -m venv .venv-onnx
.venv-onnx/bin/pip install -q --disable-pip-version-check numpy onnx==1.22.0
bin=${TESSERA:-}
if [ -z "$bin" ]; then swift build --product tessera > /dev/null; bin=.build/debug/tessera; fi
.venv-onnx/bin/python scripts/onnx_conformance.py "$bin" "$@"
