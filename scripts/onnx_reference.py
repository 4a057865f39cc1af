#!/usr/bin/env python3
"""ONNX test graphs and ONNX Runtime's outputs for them, for Tessera's ONNX import tests:

  onnx_reference.py make DIR     # DIR/<case>.onnx, DIR/<case>.input.safetensors, DIR/<case>.ort.safetensors
  onnx_reference.py bad DIR      # DIR/<case>.onnx of graphs the importer must refuse, with a clear error
  onnx_reference.py run MODEL IN OUT   # ONNX Runtime on IN's tensors → OUT (used for exported models)

The graphs are built with onnx.helper (seeded random weights), the shapes a PyTorch export writes:
a chain (Conv with bias, BatchNormalization, Relu, MaxPool, grouped dilated strided Conv,
LeakyRelu, Sigmoid, Pad, Mul by a per-channel constant, MaxPool with ceil_mode, AveragePool with count_include_pad, GlobalAveragePool, Flatten, Gemm, Softmax), a
residual network (identity and projection shortcuts, MatMul + Add head, Reshape [0, -1]) and
ReLU6 as Clip with min/max inputs (opset 13), Inception-like towers and a DenseNet-like join by Concat. scripts/setup_peers.sh installs onnx and onnxruntime.
"""
import json
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)


def w(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=np.float32).reshape(v["shape"])
    return out


def model(nodes, inits, inp, out, opset=17, name="g"):
    g = helper.make_graph(nodes, name, [inp], [out], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tessera-tests")
    onnx.checker.check_model(m)
    return m


def chain():
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 20, 22])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 5])
    nodes = [
        helper.make_node("Conv", ["image", "c1.w", "c1.b"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["a", "bn.s", "bn.b", "bn.m", "bn.v"], ["b0"], epsilon=1e-5, name="bn1"),
        helper.make_node("Mul", ["b0", "scale"], ["b"], name="layer_scale"),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("MaxPool", ["c"], ["d"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Conv", ["d", "c2.w"], ["e"], kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2], group=2,
                         pads=[2, 1, 2, 2], name="conv2"),
        helper.make_node("LeakyRelu", ["e"], ["f0"], alpha=0.2),
        helper.make_node("Sigmoid", ["f0"], ["f1"]),
        helper.make_node("Pad", ["f1", "padding"], ["f"], mode="constant"),
        helper.make_node("AveragePool", ["f"], ["g"], kernel_shape=[3, 3], pads=[1, 0, 1, 1], count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["g"], ["h"]),
        helper.make_node("Flatten", ["h"], ["i"], axis=1),
        helper.make_node("Gemm", ["i", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [init("c1.w", w(8, 3, 3, 3)), init("c1.b", w(8)), init("bn.s", 1 + w(8, scale=0.1)), init("bn.b", w(8)),
             init("bn.m", w(8, scale=0.1)), init("bn.v", 1 + np.abs(w(8))), init("c2.w", w(6, 4, 3, 3)),
             init("scale", 1 + w(1, 8, 1, 1)), init("fc.w", w(5, 6)), init("fc.b", w(5)), init("padding", np.array([0, 0, 0, 1, 0, 0, 1, 0], dtype=np.int64))]
    return model(nodes, inits, x, y), (2, 3, 20, 22)


def residual(act=True):
    """act=False: no Relu anywhere (smooth, for finite differences, which ReLU's kinks make noisy)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    nodes, inits = [], []

    def conv_bn(prefix, i, o, cin, cout, k, s, relu):
        nodes.append(helper.make_node("Conv", [i, f"{prefix}.w"], [f"{prefix}.c"], kernel_shape=[k, k], strides=[s, s],
                                      pads=[k // 2] * 4, name=f"{prefix}.conv"))
        nodes.append(helper.make_node("BatchNormalization", [f"{prefix}.c"] + [f"{prefix}.{n}" for n in "sbmv"],
                                      [o if not relu else f"{prefix}.n"], name=f"{prefix}.bn"))
        if relu:
            nodes.append(helper.make_node("Relu" if act else "Identity", [f"{prefix}.n"], [o]))
        inits.extend([init(f"{prefix}.w", w(cout, cin, k, k)), init(f"{prefix}.s", 1 + w(cout, scale=0.1)), init(f"{prefix}.b", w(cout)),
                      init(f"{prefix}.m", w(cout, scale=0.1)), init(f"{prefix}.v", 1 + np.abs(w(cout)))])

    conv_bn("stem", "input", "s0", 3, 8, 3, 1, True)
    conv_bn("b1a", "s0", "b1a.o", 8, 8, 3, 1, True)
    conv_bn("b1b", "b1a.o", "b1b.o", 8, 8, 3, 1, False)
    nodes.append(helper.make_node("Add", ["b1b.o", "s0"], ["b1.sum"], name="block1"))
    nodes.append(helper.make_node("Relu" if act else "Identity", ["b1.sum"], ["s1"]))
    conv_bn("b2a", "s1", "b2a.o", 8, 12, 3, 2, True)
    conv_bn("b2b", "b2a.o", "b2b.o", 12, 12, 3, 1, False)
    conv_bn("b2p", "s1", "b2p.o", 8, 12, 1, 2, False)
    nodes.append(helper.make_node("Add", ["b2p.o", "b2b.o"], ["b2.sum"], name="block2"))
    nodes.append(helper.make_node("Relu" if act else "Identity", ["b2.sum"], ["s2"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["s2"], ["gap"]))
    nodes.append(helper.make_node("Reshape", ["gap", "shape"], ["flat"]))
    nodes.append(helper.make_node("MatMul", ["flat", "head.w"], ["mm"]))
    nodes.append(helper.make_node("Add", ["mm", "head.b"], ["output"]))
    inits.extend([init("shape", np.array([0, -1], dtype=np.int64)), init("head.w", w(12, 4)), init("head.b", w(4))])
    return model(nodes, inits, x, y), (1, 3, 16, 16)


def resnet18(classes=1000):
    """torchvision's ResNet-18 as torch.onnx.export writes it (BatchNorm unfolded), random weights."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    nodes, inits = [], []

    def conv_bn(p, i, o, cin, cout, k, s, relu):
        nodes.append(helper.make_node("Conv", [i, f"{p}.weight"], [f"{p}.c"], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4,
                                      name=f"{p}.conv"))
        nodes.append(helper.make_node("BatchNormalization", [f"{p}.c", f"{p}.bn.weight", f"{p}.bn.bias", f"{p}.bn.running_mean",
                                                             f"{p}.bn.running_var"], [f"{p}.n" if relu else o], name=f"{p}.bn"))
        if relu:
            nodes.append(helper.make_node("Relu", [f"{p}.n"], [o]))
        inits.extend([init(f"{p}.weight", w(cout, cin, k, k, scale=(2 / (cin * k * k)) ** 0.5)), init(f"{p}.bn.weight", 1 + w(cout, scale=0.1)),
                      init(f"{p}.bn.bias", w(cout, scale=0.1)), init(f"{p}.bn.running_mean", w(cout, scale=0.1)),
                      init(f"{p}.bn.running_var", 1 + np.abs(w(cout, scale=0.1)))])

    conv_bn("conv1", "input", "stem", 3, 64, 7, 2, True)
    nodes.append(helper.make_node("MaxPool", ["stem"], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    cur, cin = "pool", 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for b in range(2):
            s = 2 if stage > 0 and b == 0 else 1
            p = f"layer{stage + 1}.{b}"
            conv_bn(f"{p}.conv1", cur, f"{p}.a", cin, cout, 3, s, True)
            conv_bn(f"{p}.conv2", f"{p}.a", f"{p}.b", cout, cout, 3, 1, False)
            short = cur
            if s != 1 or cin != cout:
                conv_bn(f"{p}.downsample", cur, f"{p}.d", cin, cout, 1, s, False)
                short = f"{p}.d"
            nodes.append(helper.make_node("Add", [f"{p}.b", short], [f"{p}.sum"], name=f"{p}.add"))
            nodes.append(helper.make_node("Relu", [f"{p}.sum"], [f"{p}.out"]))
            cur, cin = f"{p}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc"))
    inits.extend([init("fc.weight", w(classes, 512, scale=0.05)), init("fc.bias", w(classes, scale=0.05))])
    return model(nodes, inits, x, y), (1, 3, 64, 64)


def branches():
    """Inception-like towers joined by Concat, then a DenseNet-like "input and new features" Concat."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 3, 12, 12])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("Conv", ["image", "s.w"], ["s"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s1"]),
        helper.make_node("Conv", ["s1", "a.w"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["s1", "b.w"], ["b0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b0"], ["b"]),
        helper.make_node("MaxPool", ["s1"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Conv", ["c0", "c.w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["b", "a", "c"], ["t"], axis=1, name="towers"),
        helper.make_node("BatchNormalization", ["t", "bn.s", "bn.b", "bn.m", "bn.v"], ["t1"]),
        helper.make_node("Conv", ["t1", "d.w"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["t1", "d"], ["u"], axis=1, name="dense"),
        helper.make_node("GlobalAveragePool", ["u"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w"], ["logits"], transB=1),
    ]
    inits = [init("s.w", w(6, 3, 3, 3)), init("a.w", w(4, 6, 1, 1)), init("b.w", w(5, 6, 3, 3)), init("c.w", w(3, 6, 1, 1)),
             init("bn.s", 1 + w(12, scale=0.1)), init("bn.b", w(12)), init("bn.m", w(12, scale=0.1)), init("bn.v", 1 + np.abs(w(12))),
             init("d.w", w(4, 12, 3, 3)), init("fc.w", w(3, 16))]
    return model(nodes, inits, x, y), (2, 3, 12, 12)


def relu6():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 9, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
        helper.make_node("Dropout", ["b"], ["c"]),
        helper.make_node("Flatten", ["c"], ["d"]),
        helper.make_node("Gemm", ["d", "fw"], ["y"]),
    ]
    inits = [init("w", w(4, 2, 3, 3, scale=1.5)), init("lo", np.array(0, np.float32)), init("hi", np.array(6, np.float32)),
             init("fw", w(4 * 5 * 5, 3))]
    return model(nodes, inits, x, y, opset=13), (2, 2, 9, 9)


def conv_w_input():
    """As ONNX's own node tests: the Conv's weight is a graph input, not an initializer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 7])
    wi = helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                          "conv", [x, wi], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(m)
    return m


def make(d):
    import onnxruntime as ort
    os.makedirs(d, exist_ok=True)
    for name, fn in [("chain", chain), ("residual", residual), ("relu6", relu6), ("smooth", lambda: residual(False)), ("resnet18", resnet18), ("branches", branches)]:
        m, shape = fn()
        path = f"{d}/{name}.onnx"
        onnx.save(m, path)
        x = rng.standard_normal(shape).astype(np.float32)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name
        out = sess.run(None, {inp: x})[0]
        save_safetensors(f"{d}/{name}.input.safetensors", {inp: x})
        save_safetensors(f"{d}/{name}.ort.safetensors", {sess.get_outputs()[0].name: out})
    m = conv_w_input()
    onnx.save(m, f"{d}/conv_w_input.onnx")
    x, wt = rng.standard_normal((1, 2, 7, 7)).astype(np.float32), w(3, 2, 3, 3)
    out = ort.InferenceSession(f"{d}/conv_w_input.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x, "W": wt})[0]
    save_safetensors(f"{d}/conv_w_input.input.safetensors", {"x": x, "W": wt})
    save_safetensors(f"{d}/conv_w_input.ort.safetensors", {"y": out})
    print(f"{d}: chain, residual, relu6, smooth, resnet18, branches, conv_w_input")


def bad(d):
    os.makedirs(d, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    wt = init("w", w(2, 2, 3, 3))
    cases = {
        "unknown_op": ([helper.make_node("Sin", ["x"], ["y"], name="weird")], []),
        "concat_axis": ([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
                         helper.make_node("Concat", ["a", "b"], ["y"], axis=2, name="cat")], []),
        "mul": ([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
                 helper.make_node("Mul", ["a", "b"], ["y"], name="product")], []),
        "attribute": ([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="c",
                                        unknown_attr=3)], [wt]),
        "computed_weight": ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["x", "r"], ["y"], name="c2")], []),
    }
    for name, (nodes, inits) in cases.items():
        g = helper.make_graph(nodes, name, [x], [y], initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(m, f"{d}/{name}.onnx")
    # Weights in an external data file.
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "ext", [x], [y],
                          initializer=[init("w", w(2, 2, 3, 3))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, f"{d}/external.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="external.data",
              size_threshold=0)
    # A cycle (b feeds the Add that makes it).
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                           helper.make_node("Relu", ["b"], ["y"])], "cycle", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), f"{d}/cycle.onnx")
    # Truncated and garbage bytes.
    good = open(f"{d}/unknown_op.onnx", "rb").read()
    open(f"{d}/truncated.onnx", "wb").write(good[: len(good) // 2])
    open(f"{d}/garbage.onnx", "wb").write(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    # A 10^6 × 10^6 input and weights of absurd dimensions (no data).
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([1 << 20, 1 << 20, 3, 3])
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])], "absurd", [x], [y], initializer=[t])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), f"{d}/absurd.onnx")
    print(f"{d}: {', '.join(list(cases) + ['external', 'cycle', 'truncated', 'garbage', 'absurd'])}")


def run(model_path, inp, out):
    import onnxruntime as ort
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    tensors = load_safetensors(inp)
    feeds = {i.name: tensors.get(i.name, tensors.get("input")) for i in sess.get_inputs()}
    results = sess.run(None, feeds)
    save_safetensors(out, {o.name: r for o, r in zip(sess.get_outputs(), results)})


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "bad":
        bad(sys.argv[2])
    elif cmd == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4])
