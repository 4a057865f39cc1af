#!/usr/bin/env python3
"""fcn-large's two parts in Keras/TensorFlow inference, timed apart: the stem (7×7/2 conv, BatchNorm,
ReLU, 3×3/2 max pooling) on the image, and the rest (four stages and the head) on the stem's output
— to set beside `tessera bench train --inference --profile`, whose lines split the same way.

  /tmp/peers/bin/python benchmarks/tf_parts.py [--size 512] [--batch 8] [--runs 15]

The model is the peer's own (`build_fcn` in ../shared/peers/keras_bench.py, the one
benchmarks/side_by_side.sh times), cut after its `stem_pool` layer. TF's oneDNN kernels are
switched on (TF_ENABLE_ONEDNN_OPTS=1) unless the caller sets the variable. Prints one JSON line:
the median and best milliseconds of each part's predict_on_batch.
"""
import argparse, json, os, statistics, sys, time
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peers"))
from keras_bench import build_fcn  # noqa: E402

def parts(size):
    """The whole fcn, then its stem (image → stem_pool) and the rest (stem_pool's output → logits)."""
    full = build_fcn(keras, size, 3)
    cut = full.get_layer("stem_pool")
    stem = keras.Model(full.input, cut.output)
    inp = keras.Input(cut.output.shape[1:])
    x = inp
    for layer in full.layers[full.layers.index(cut) + 1:]:
        x = layer(x)
    return stem, keras.Model(inp, x)

def timed(model, data, runs):
    for _ in range(3):
        model.predict_on_batch(data)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        model.predict_on_batch(data)
        ts.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(ts), 1), round(min(ts), 1)

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=15)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    stem, rest = parts(a.size)
    s_med, s_best = timed(stem, rng.random((a.batch, a.size, a.size, 3), dtype=np.float32), a.runs)
    q = rest.input.shape[1:]
    r_med, r_best = timed(rest, rng.random((a.batch, *q), dtype=np.float32), a.runs)
    print(json.dumps({"size": a.size, "batch": a.batch, "onednn": os.environ["TF_ENABLE_ONEDNN_OPTS"],
                      "stem_ms": s_med, "stem_best_ms": s_best, "rest_ms": r_med, "rest_best_ms": r_best}))

if __name__ == "__main__":
    main()
