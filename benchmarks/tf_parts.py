#!/usr/bin/env python3
"""fcn-large's two parts in Keras/TensorFlow inference, timed apart: the stem (7×7/2 conv, BatchNorm,
ReLU, 3×3/2 max pooling) on the image, and the rest (four stages and the head) on the stem's output
— to set beside `tessera bench train --inference --profile`, whose lines split the same way.

  /tmp/peers/bin/python benchmarks/tf_parts.py [--size 512] [--batch 8] [--runs 15]

TF's oneDNN kernels are switched on (TF_ENABLE_ONEDNN_OPTS=1) unless the caller sets the variable.
Prints one JSON line: the median and best milliseconds of each part's predict_on_batch.
"""
import argparse, json, os, statistics, time
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

L = keras.layers

def stem(size):
    inp = keras.Input((size, size, 3))
    x = L.Conv2D(16, 7, strides=2, padding="same", use_bias=False)(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    return keras.Model(inp, L.MaxPooling2D(3, strides=2, padding="same")(x))

def rest(size):
    inp = keras.Input((size // 4, size // 4, 16))
    x = inp
    for f in [32, 64, 128, 256]:
        for s in [2, 1]:
            x = L.Conv2D(f, 3, strides=s, padding="same", use_bias=False)(x)
            x = L.ReLU()(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D()(L.Conv2D(10, 1)(x))
    return keras.Model(inp, x)

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
    s_med, s_best = timed(stem(a.size), rng.random((a.batch, a.size, a.size, 3), dtype=np.float32), a.runs)
    q = a.size // 4
    r_med, r_best = timed(rest(a.size), rng.random((a.batch, q, q, 16), dtype=np.float32), a.runs)
    print(json.dumps({"size": a.size, "batch": a.batch, "onednn": os.environ["TF_ENABLE_ONEDNN_OPTS"],
                      "stem_ms": s_med, "stem_best_ms": s_best, "rest_ms": r_med, "rest_best_ms": r_best}))

if __name__ == "__main__":
    main()
