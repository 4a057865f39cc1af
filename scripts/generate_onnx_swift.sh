#!/usr/bin/env bash
# Regenerates Sources/TesseraONNX/onnx.pb.swift (committed) from onnx.proto of onnx 1.22.0 with
# swift-protobuf's protoc-gen-swift 1.39.0 (the version Package.swift depends on). Needs protoc
# (Debian: protobuf-compiler) and pip; builds protoc-gen-swift from a swift-protobuf checkout
# (SWIFT_PROTOBUF=path, default: a clone of https://github.com/apple/swift-protobuf at 1.39.0).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" onnx==1.22.0
python3 -c "import zipfile, glob, sys; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/onnx-*.whl')[0]); open(sys.argv[1] + '/onnx.proto', 'wb').write(z.read('onnx/onnx.proto'))" "$work"
src=${SWIFT_PROTOBUF:-$work/swift-protobuf}
if [ ! -d "$src" ]; then git clone --quiet --branch 1.39.0 https://github.com/apple/swift-protobuf "$src"; fi
(cd "$src" && swift build -c release --product protoc-gen-swift)
protoc --plugin=protoc-gen-swift="$src/.build/release/protoc-gen-swift" --proto_path="$work" \
  --swift_out=Sources/TesseraONNX --swift_opt=Visibility=Internal "$work/onnx.proto"
echo "wrote Sources/TesseraONNX/onnx.pb.swift"
