#!/usr/bin/env bash
# Memory modes of fcn-large, batch 1: time, ledger peak, planned peak and max RSS of each.
# Usage: benchmarks/streaming.sh [sizes...]   (default: 2048 4096 8192); build with -c release first.
set -euo pipefail
B=${TESSERA:-.build/release/tessera}
sizes=${*:-2048 4096 8192}
run() {  # size, label, args...
  local n=$1 label=$2; shift 2
  local out
  if out=$($B bench train --model fcn-large --input 3x${n}x${n} --batch 1 --steps "${STEPS:-2}" --warmup 1 --json "$@" 2>/dev/null); then
    python3 - "$n" "$label" "$out" <<'PY'
import json, sys
n, label, d = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mib = lambda b: f"{b / 2**20:,.1f}"
print(f"| {n}² | {label} | {d['seconds_per_step']:.2f} | {mib(d['peak_bytes'])} | {mib(d['planned_peak_bytes'])} | {mib(d['max_rss_bytes'])} | {d.get('stream_blocks', '')} | {d.get('estimated_relative_time', '')} |")
PY
  else
    echo "| ${n}² | $label | refused or failed: $(echo "$out" | tail -1) | | | | | |"
  fi
}
echo "| input | mode | s/step | ledger peak MiB | planned MiB | max RSS MiB | blocks streamed | est. × |"
echo "|---|---|---|---|---|---|---|---|"
for n in $sizes; do
  if [ "$n" -le 4096 ]; then
    run "$n" "plain" 
    run "$n" "checkpointing all" --checkpointing all
    run "$n" "fp16 storage" --precision fp16
  fi
  t=$(( n >= 4096 ? 2048 : 1024 ))
  run "$n" "streaming auto in 2 GiB, tile $t" --tile $t --budget 2GiB
  run "$n" "streaming 3 blocks (one segment), tile $t" --tile $t --stream-blocks 3 --stream-split 0
  run "$n" "streaming 3 blocks as stem | stage1-2, tile $t" --tile $t --stream-blocks 3 --stream-split 1
  run "$n" "streaming 3 blocks frozen BN, tile $t" --tile $t --stream-blocks 3 --stream-split 0 --frozen-bn
  if [ "$n" -le 4096 ]; then run "$n" "streaming 6 blocks, tile $t" --tile $t --stream-blocks 6; fi
done
