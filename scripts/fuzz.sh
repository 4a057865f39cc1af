#!/usr/bin/env bash
# libFuzzer + AddressSanitizer on one of Tessera's readers of untrusted bytes.
#   scripts/fuzz.sh TARGET SECONDS [JOBS]
# TARGET: image (JPEG/PNG/PNM), safetensors, spec (model spec YAML/JSON), manifest (CSV), runjson
# (run folder config.json / checkpoint state), tiff (TIFF directories and regions through libtiff), onnx (ONNX models through the importer). Seeds come from the repository (test fixtures,
# examples); the corpus grows in .fuzz/corpus/TARGET, crashes land in .fuzz/crashes/ (each is
# replayed with `swift run tessera-fuzz TARGET FILE` and becomes a regression test).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
seconds=${2:-600}
build=.build-fuzz
swift build --product tessera-fuzz --build-path "$build" \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xcc -fsanitize=fuzzer-no-link,address >&2
corpus=.fuzz/corpus/$target seeds=.fuzz/seeds/$target
mkdir -p "$corpus" "$seeds" .fuzz/crashes
case $target in
  image)
    cp Tests/TesseraDataTests/Fixtures/*.jpg "$seeds"/
    printf 'P6 3 2 255\n%s' "$(head -c 18 /dev/zero | tr '\0' 'a')" > "$seeds/a.ppm"
    printf 'P3 2 1 255\n1 2 3 4 5 6\n' > "$seeds/a3.ppm"
    printf 'P5 2 2 65535\n\0\1\0\2\0\3\0\4' > "$seeds/a16.pgm"
    python3 - "$seeds/a.png" <<'PY'
import struct, sys, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
raw = b"".join(b"\0" + bytes([x * 40, 255 - x * 40, 7]) * 4 for x in range(3))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
PY
    ;;
  safetensors)
    python3 - "$seeds/a.safetensors" <<'PY'
import json, struct, sys
h = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "l": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}, "__metadata__": {"format": "pt"}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + bytes(24))
PY
    ;;
  spec) cp examples/*.yaml examples/*.json "$seeds"/ ;;
  manifest)
    printf 'path,label,split\na/1.jpg,cat,train\n"b,c/2.png",dog,test\n' > "$seeds/a.csv"
    printf '# root: ../data\nlabel,path\ncat,x.ppm\n' > "$seeds/b.csv" ;;
  runjson)
    printf '{"model":"fcn-large","imageSize":32,"classes":["a","b"],"policy":"fit","batch":4}' > "$seeds/a.json"
    printf '{"epoch":1,"step":3,"bestAccuracy":0.5,"seed":0,"batchesDone":2}' > "$seeds/b.json" ;;
  tiff)
    python3 - "$seeds" <<'PY'
import struct, sys
d = sys.argv[1]
def tiff(entries, body, tiled=False):
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for t, ty, c, v in sorted(entries):
        out += struct.pack("<HHI", t, ty, c) + (struct.pack("<HH", v, 0) if ty == 3 else struct.pack("<I", v))
    out += struct.pack("<I", 0)
    return out + b"\0" * (200 - len(out)) + body
strip = [(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 200),
         (277, 3, 1, 1), (278, 4, 1, 16), (279, 4, 1, 256)]
open(f"{d}/strip.tif", "wb").write(tiff(strip, bytes(range(256))))
tile = [(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (277, 3, 1, 1),
        (322, 4, 1, 16), (323, 4, 1, 16), (324, 4, 1, 200), (325, 4, 1, 256)]
open(f"{d}/tile.tif", "wb").write(tiff(tile, bytes(range(256))))
PY
    [ -x .venv-peers/bin/python ] && .venv-peers/bin/python scripts/tiff_reference.py fixtures "$seeds" 2> /dev/null || true
    find "$seeds" -size +200k -delete ;;
  onnx)
    [ -x .venv-peers/bin/python ] && .venv-peers/bin/python scripts/onnx_reference.py make "$seeds" > /dev/null 2>&1 || true
    [ -x .venv-peers/bin/python ] && .venv-peers/bin/python scripts/onnx_reference.py bad "$seeds" > /dev/null 2>&1 || true
    find "$seeds" -type f ! -name '*.onnx' -delete; find "$seeds" -size +60k -delete ;;
  *) echo "unknown target '$target' (image, safetensors, spec, manifest, runjson, tiff, onnx)" >&2; exit 2 ;;
esac
TESSERA_FUZZ_TARGET=$target ASAN_OPTIONS=detect_leaks=0 "$build/debug/tessera-fuzz" "$corpus" "$seeds" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix=".fuzz/crashes/$target-"
