#!/usr/bin/env python3
"""A large JPEG with photo-like content (smooth colour fields, edges and grain), for benchmarks
that need a big real-looking image without downloading one:

  make_slide.py SIDE OUT.jpg [QUALITY]

Made band by band in numpy and encoded by imagecodecs (scripts/setup_peers.sh installs both).
"""
import sys

import imagecodecs
import numpy as np

side, out = int(sys.argv[1]), sys.argv[2]
quality = int(sys.argv[3]) if len(sys.argv) > 3 else 90
rng = np.random.default_rng(3)
# Low-frequency colour fields (bilinear upsampling of a coarse grid), cell-like blobs, grain.
coarse = rng.random((side // 256 + 2, side // 256 + 2, 3)).astype(np.float32)
ys = np.arange(side, dtype=np.float32) / 256
img = np.empty((side, side, 3), np.uint8)
xs = np.arange(side, dtype=np.float32) / 256
x0 = xs.astype(int); fx = (xs - x0)[None, :, None]
band = 1024
for b in range(0, side, band):
    y = ys[b:b + band]
    y0 = y.astype(int); fy = (y - y0)[:, None, None]
    c00 = coarse[y0][:, x0]; c01 = coarse[y0][:, x0 + 1]; c10 = coarse[y0 + 1][:, x0]; c11 = coarse[y0 + 1][:, x0 + 1]
    field = (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy
    yy, xx = np.mgrid[b:b + len(y), 0:side]
    blobs = (np.sin(xx * 0.11 + np.sin(yy * 0.013) * 9) * np.cos(yy * 0.07 + np.sin(xx * 0.017) * 7) > 0.55)[..., None]
    v = 60 + 150 * field - 70 * blobs + rng.normal(0, 9, (len(y), side, 1))
    img[b:b + len(y)] = np.clip(v, 0, 255).astype(np.uint8)
open(out, "wb").write(imagecodecs.jpeg8_encode(img, level=quality))
print(f"{out}: {side}×{side}")
