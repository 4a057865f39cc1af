#!/usr/bin/env bash
# fcn-large at 1024², batch 4: Tessera and the Keras/TensorFlow peer alternately, N rounds, one JSON
# line per run (stdout). Usage: PEER_PY=/tmp/peers/bin/python benchmarks/side_by_side.sh [rounds] [size] [batch]
# Set up the peer once as ../shared/peers/README.md says. Build Tessera with `swift build -c release`.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; size=${2:-1024}; batch=${3:-4}
PEER_PY=${PEER_PY:-/tmp/peers/bin/python}
peer=../shared/peers/keras_bench.py
bin=.build/release/tessera
for r in $(seq "$rounds"); do
  "$PEER_PY" "$peer" --model fcn --size "$size" --batch "$batch" --steps 10 2>/dev/null
  "$bin" bench train --model fcn-large --input "3x${size}x${size}" --batch "$batch" --steps 10 --json 2>/dev/null
  "$PEER_PY" "$peer" --model fcn --size "$size" --batch "$batch" --steps 10 --inference 2>/dev/null
  "$bin" bench train --model fcn-large --input "3x${size}x${size}" --batch "$batch" --steps 10 --inference --json 2>/dev/null
done
