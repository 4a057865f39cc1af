#!/usr/bin/env bash
# fcn-large beside the Keras/TensorFlow peer, alternating rounds: training and inference at each
# SIZExBATCH given (default 512x8 1024x4 2048x1, the #13 goals), one JSON line per run (stdout) and
# a table of medians at the end (stderr).
#   PEER_PY=/tmp/peers/bin/python benchmarks/side_by_side.sh [rounds] [SIZExBATCH ...]
# COMPUTE=bf16 compares Tessera's --compute bf16 with Keras's mixed_bfloat16 policy (default fp32
# on both sides). MODES="train" (or "inference") runs one mode only (default both).
# Set up the peer once as ../shared/peers/README.md says. Build Tessera with `swift build -c release`.
# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on
# others (an AVX2-only Zen 3) it falls back to Eigen's convolutions at half the speed. The peer runs
# with TF_ENABLE_ONEDNN_OPTS=1 unless the caller sets it, so it is TF at its best on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; shift || true
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(512x8 1024x4 2048x1)
PEER_PY=${PEER_PY:-/tmp/peers/bin/python}
COMPUTE=${COMPUTE:-fp32}
MODES=${MODES:-train inference}
case "$COMPUTE" in fp32) dtype=float32 ;; bf16) dtype=mixed_bfloat16 ;; *) echo "COMPUTE must be fp32 or bf16" >&2; exit 2 ;; esac
peer=../shared/peers/keras_bench.py
export TF_ENABLE_ONEDNN_OPTS=${TF_ENABLE_ONEDNN_OPTS:-1}
bin=.build/release/tessera
log=$(mktemp)
for r in $(seq "$rounds"); do
  for c in "${configs[@]}"; do
    size=${c%x*}; batch=${c#*x}
    for mode in $MODES; do
      flag=$([ "$mode" = inference ] && echo --inference || true)
      line=$("$PEER_PY" "$peer" --model fcn --size "$size" --batch "$batch" --steps 10 --dtype $dtype $flag 2>/dev/null | tail -1)
      echo "{\"side\":\"tf\",\"compute\":\"$COMPUTE\",\"size\":$size,\"batch\":$batch,\"mode\":\"$mode\",\"round\":$r,\"result\":$line}" | tee -a "$log"
      line=$("$bin" bench train --model fcn-large --input "3x${size}x${size}" --batch "$batch" --steps 10 --compute "$COMPUTE" $flag --json 2>/dev/null | tail -1)
      echo "{\"side\":\"tessera\",\"compute\":\"$COMPUTE\",\"size\":$size,\"batch\":$batch,\"mode\":\"$mode\",\"round\":$r,\"result\":$line}" | tee -a "$log"
    done
  done
done
python3 - "$log" >&2 <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["size"], r["batch"], r["mode"]) for r in rows})
print("size  batch  mode       TF img/s (rounds)                Tessera img/s (rounds)           ratio (median of round ratios)")
for k in keys:
    tf = [r["result"]["img_per_s"] for r in rows if (r["size"], r["batch"], r["mode"]) == k and r["side"] == "tf"]
    te = [r["result"]["images_per_second"] for r in rows if (r["size"], r["batch"], r["mode"]) == k and r["side"] == "tessera"]
    ratios = [b / a for a, b in zip(tf, te)]
    print(f"{k[0]:<5} {k[1]:<6} {k[2]:<10} {statistics.median(tf):7.2f} ({', '.join(f'{v:.2f}' for v in tf)})   "
          f"{statistics.median(te):7.2f} ({', '.join(f'{v:.2f}' for v in te)})   {statistics.median(ratios):.2f} "
          f"({', '.join(f'{v:.2f}' for v in ratios)})")
PY
rm -f "$log"
