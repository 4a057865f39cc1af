#!/usr/bin/env bash
# SIGKILL at random moments, then --resume: every trial must end with every metrics line and the
# same bytes of last.safetensors as a run never interrupted.
#   scripts/kill_resume.sh [TRIALS] [TESSERA_BINARY]
# Data: 2 classes × 24 random PPM images (made here); 4 epochs of fcn-large at 48², batch 4.
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
    for i in range(24):
        px = bytes(random.randrange(256) if c == "a" else random.randrange(128) for _ in range(40 * 40 * 3))
        open(os.path.join(d, f"{i}.ppm"), "wb").write(b"P6 40 40 255\n" + px)
PY
args=(train --data "$work/data" --image-size 48 --epochs 4 --batch 4 --seed 2 --threads 1)
"$bin" "${args[@]}" --out "$work/ref" > /dev/null 2>&1
epochs=$(wc -l < "$work/ref/metrics.jsonl")
ok=0; nothing=0
for t in $(seq 1 "$trials"); do
  out="$work/t$t"
  delay=$(python3 -c "import random; print(round(random.uniform(0.05, 2.5), 3))")
  "$bin" "${args[@]}" --out "$out" > /dev/null 2>&1 & pid=$!
  sleep "$delay"; kill -9 "$pid" 2> /dev/null || true; wait "$pid" 2> /dev/null || true
  state="killed at ${delay}s"
  if [ -f "$out/last.safetensors" ]; then flag=--resume; else flag=--overwrite; nothing=$((nothing + 1)); fi
  "$bin" "${args[@]}" --out "$out" $flag > /dev/null 2>&1
  lines=$(wc -l < "$out/metrics.jsonl")
  if cmp -s "$out/last.safetensors" "$work/ref/last.safetensors" && [ "$lines" = "$epochs" ]; then
    ok=$((ok + 1)); echo "trial $t: $state, resumed with $flag: identical, $lines metrics lines"
  else
    echo "trial $t: $state, resumed with $flag: DIFFERENT (metrics lines $lines of $epochs)"
  fi
done
echo "$ok of $trials trials identical ($nothing killed before the first checkpoint)"
[ "$ok" = "$trials" ]
