#!/usr/bin/env bash
# The independent references for tests and benchmarks, in .venv-peers (never committed):
# tifffile + imagecodecs (TIFF pixels and layouts), numpy, tensorboard (its own reader checks
# `train --tensorboard` event files), onnx 1.22.0 + onnxruntime (ONNX graphs and their reference
# outputs). Tests that need them skip, with this script's name, where
# they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-peers/bin/python ] || python3 -m venv .venv-peers
.venv-peers/bin/pip install -q --disable-pip-version-check numpy tifffile imagecodecs tensorboard onnx==1.22.0 onnxruntime
.venv-peers/bin/python -c "import tifffile, imagecodecs; print('peers: tifffile', tifffile.__version__, 'imagecodecs', imagecodecs.__version__)"
.venv-peers/bin/python -c "import tensorboard; print('peers: tensorboard', tensorboard.__version__)"
.venv-peers/bin/python -c "import onnx, onnxruntime; print('peers: onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
