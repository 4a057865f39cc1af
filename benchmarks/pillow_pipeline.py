#!/usr/bin/env python3
"""The peer of `tessera bench data`: the same pipeline in Pillow, on the same files.

For every image under ROOT (any depth; .jpg/.jpeg/.png): open, let the JPEG decoder reduce by DCT
scaling (`Image.draft`, Pillow's equivalent of Tessera's), convert to RGB, resize with the aspect
ratio kept to fit SIZE×SIZE (BOX filter = area averaging), and letterbox onto a SIZE×SIZE canvas,
then to a float32 array in [0, 1] (what a network is fed). Runs on --threads worker threads
(Pillow releases the GIL while decoding and resizing); prints one JSON line with the best of --passes.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image


def prepare(path, size, draft):
    im = Image.open(path)
    if draft:
        im.draft("RGB", (size, size))
    im = im.convert("RGB")
    w, h = im.size
    s = min(size / w, size / h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    im = im.resize((rw, rh), Image.BOX)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(im, ((size - rw) // 2, (size - rh) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.root) for f in fs
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        sys.exit("no images under " + a.root)
    out = {"peer": "Pillow " + Image.__version__, "images": len(files), "threads": a.threads}
    for draft in (True, False):
        best = 0.0
        for _ in range(a.passes):
            t = time.perf_counter()
            with ThreadPoolExecutor(a.threads) as ex:
                list(ex.map(lambda p: prepare(p, a.size, draft), files))
            best = max(best, len(files) / (time.perf_counter() - t))
        out["images_per_second" if draft else "images_per_second_no_draft"] = round(best, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
