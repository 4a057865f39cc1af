#!/usr/bin/env bash
# SIGKILL at random moments, then --resume: every trial must end with every metrics line and the
# same bytes of last.safetensors as a run never interrupted.
#   scripts/kill_resume.sh [TRIALS] [TESSERA_BINARY]
# Data: 2 classes × 32 random PPM images (made here); 4 epochs of fcn-large at 96², batch 4; each
# kill comes at a uniformly random moment of the reference run's duration.
set -euo pipefail
trials=${1:-20}
bin=${2:-.build/release/tessera}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/data" <<'PY'
import os, random, sys
random.seed(1)
for c in ("a", "b"):
    d = os.path.join(sys.argv[1], c); os.makedirs(d)
    for i in range(32):
        px = bytes(random.randrange(256) if c == "a" else random.randrange(128) for _ in range(40 * 40 * 3))
        open(os.path.join(d, f"{i}.ppm"), "wb").write(b"P6 40 40 255\n" + px)
PY
args=(train --data "$work/data" --image-size 96 --epochs 4 --batch 4 --seed 2 --threads 1)
start=$(date +%s.%N)
"$bin" "${args[@]}" --out "$work/ref" > /dev/null 2>&1
duration=$(python3 -c "print($(date +%s.%N) - $start)")
printf "reference run: %.2f s\n" "$duration"
epochs=$(wc -l < "$work/ref/metrics.jsonl")
# Same tensors, byte for byte (weights, running statistics, optimizer state) and the same training
# state; the header's key order may differ between processes.
same() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); body = b[8 + n:]
    meta = h.pop("__metadata__", {})
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in h.items()}, json.loads(meta.get("state", "{}"))
a, b = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if a == b else 1)
PY
}
ok=0; nothing=0
for t in $(seq 1 "$trials"); do
  out="$work/t$t"
  delay=$(python3 -c "import random; print(round(random.uniform(0.05, $duration), 3))")
  "$bin" "${args[@]}" --out "$out" > /dev/null 2>&1 & pid=$!
  sleep "$delay"; kill -9 "$pid" 2> /dev/null || true; wait "$pid" 2> /dev/null || true
  state="killed at ${delay}s"
  if [ -f "$out/last.safetensors" ]; then flag=--resume; else flag=--overwrite; nothing=$((nothing + 1)); fi
  "$bin" "${args[@]}" --out "$out" $flag > "$work/log" 2>&1 || grep -q "already trained" "$work/log" || { echo "trial $t: resume failed: $(tail -1 "$work/log")"; continue; }
  lines=$(wc -l < "$out/metrics.jsonl")
  if same "$out/last.safetensors" "$work/ref/last.safetensors" && [ "$lines" = "$epochs" ]; then
    ok=$((ok + 1)); echo "trial $t: $state, resumed with $flag: identical, $lines metrics lines"
  else
    echo "trial $t: $state, resumed with $flag: DIFFERENT (metrics lines $lines of $epochs)"
  fi
done
echo "$ok of $trials trials identical ($nothing killed before the first checkpoint)"
[ "$ok" = "$trials" ]
