#!/usr/bin/env python3
"""Read a safetensors file the way a PyTorch/numpy user would, and print one JSON line:
{"reader": ..., "tensors": {name: {"dtype", "shape", "sum", "first"}}}.

Uses Hugging Face's `safetensors.numpy.load_file` when installed; otherwise an independent
numpy-only parser of the format (8-byte little-endian header length, JSON header, raw data).
The Tessera tests run it to prove files written by Tessera are readable outside Swift.

    python3 scripts/read_safetensors.py FILE [--require-safetensors]
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "BF16": None}


def numpy_reader(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = body[b:end]
        if e["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[e["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(e["shape"])
    return out


def main():
    path = sys.argv[1]
    require = "--require-safetensors" in sys.argv
    try:
        from safetensors import safe_open
    except ImportError:
        if require:
            sys.exit("the safetensors package is not installed (pip install safetensors)")
        safe_open = None
    if safe_open is None:
        tensors, reader = numpy_reader(path), "numpy"
    else:
        # numpy has no bfloat16: safetensors' numpy reader refuses BF16 tensors, so those (only)
        # are decoded by the numpy parser.
        tensors, reader, fallback = {}, "safetensors", None
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                try:
                    tensors[name] = f.get_tensor(name)
                except TypeError:
                    fallback = fallback or numpy_reader(path)
                    tensors[name] = fallback[name]
                    reader = "safetensors (BF16 via numpy)"
    summary = {}
    for name, a in tensors.items():
        a64 = np.asarray(a, dtype=np.float64)
        summary[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "sum": float(a64.sum()),
                         "first": float(a64.reshape(-1)[0]) if a64.size else None}
    print(json.dumps({"reader": reader, "tensors": summary}))


if __name__ == "__main__":
    main()
