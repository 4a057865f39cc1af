#!/usr/bin/env python3
"""ONNX's own node test cases (shipped in the onnx wheel under onnx/backend/test/data/node) of the
ops Tessera imports, each run through `tessera forward` and compared with the expected output
(rtol 1e-3, atol 1e-7, as ONNX's backend tests):

  onnx_conformance.py TESSERA [--json]

Prints passed / failed / unsupported per op and in all; an unsupported case is one the importer
refuses (its reason is listed), a failed one runs and differs. scripts/onnx_conformance.sh sets up
the environment. Nothing is committed from the cases.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_reference import load_safetensors, save_safetensors  # noqa: E402

OPS = {"Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
       "Gemm", "MatMul", "Reshape", "Dropout", "Identity", "Softmax", "Add", "Sigmoid", "Pad", "Mul"}

tessera = sys.argv[1]
root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
results = defaultdict(lambda: {"passed": 0, "failed": 0, "unsupported": 0})
details = []
for case in sorted(glob.glob(os.path.join(root, "test_*"))):
    path = os.path.join(case, "model.onnx")
    if not os.path.exists(path):
        continue
    m = onnx.load(path)
    ops = {n.op_type for n in m.graph.node}
    if len(ops) != 1 or not ops <= OPS:
        continue
    op = next(iter(ops))
    sets = sorted(glob.glob(os.path.join(case, "test_data_set_*")))
    if not sets:
        continue
    s = sets[0]
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    name = os.path.basename(case)
    try:
        inputs = [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(os.path.join(s, "input_*.pb")))]
        outputs = [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(os.path.join(s, "output_*.pb")))]
    except Exception as e:  # noqa: BLE001  (sequences and optionals are not tensors)
        results[op]["unsupported"] += 1
        details.append({"case": name, "op": op, "status": "unsupported", "why": f"test data is not a tensor ({type(e).__name__})"})
        continue
    with tempfile.TemporaryDirectory() as d:
        if any(a.dtype not in (np.float32, np.float64, np.int64) for a in inputs):
            results[op]["unsupported"] += 1
            details.append({"case": name, "op": op, "status": "unsupported", "why": "input type " + ", ".join(str(a.dtype) for a in inputs)})
            continue
        save_safetensors(f"{d}/in.safetensors", {n: a.astype(np.float32) for n, a in zip(names, inputs)})
        r = subprocess.run([tessera, "forward", "--model", path, "--input", f"{d}/in.safetensors", "--out", f"{d}/out.safetensors"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
            crashed = r.returncode < 0 or "Fatal error" in r.stderr
            results[op]["failed" if crashed else "unsupported"] += 1
            details.append({"case": name, "op": op, "status": "crashed" if crashed else "unsupported",
                            "why": why.split(": ", 1)[-1][:300]})
            continue
        got = load_safetensors(f"{d}/out.safetensors")
        want = outputs[0]
        ours = got.get(m.graph.output[0].name, got.get("output"))
        ok = ours is not None and ours.size == want.size and np.allclose(ours.reshape(want.shape), want, rtol=1e-3, atol=1e-7)
        results[op]["passed" if ok else "failed"] += 1
        if not ok:
            details.append({"case": name, "op": op, "status": "failed",
                            "why": f"max difference {np.abs(ours.reshape(want.shape) - want).max() if ours is not None and ours.size == want.size else 'shape'}"})

total = {k: sum(v[k] for v in results.values()) for k in ["passed", "failed", "unsupported"]}
if "--json" in sys.argv:
    print(json.dumps({"total": total, "ops": results, "details": details}, indent=1))
else:
    for op in sorted(results):
        r = results[op]
        print(f"{op:20s} passed {r['passed']:3d}  failed {r['failed']:3d}  unsupported {r['unsupported']:3d}")
    print(f"{'all':20s} passed {total['passed']:3d}  failed {total['failed']:3d}  unsupported {total['unsupported']:3d}")
    for x in details:
        print(f"  {x['status']:11s} {x['case']}: {x['why']}")
sys.exit(1 if total["failed"] else 0)
