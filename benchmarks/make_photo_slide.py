#!/usr/bin/env python3
"""A gigapixel JPEG-tiled BigTIFF made of real photographs, for the gigapixel benchmarks:

  make_photo_slide.py SIDE OUT.tif [QUALITY]
  make_photo_slide.py crops OUTDIR N       # N labelled 256² crops: OUTDIR/histology, OUTDIR/other

The photographs are the colour pictures scikit-image ships inside its wheel (an immunohistochemistry
slide, a retina, the Hubble deep field, a cat, coffee, a rocket, motorcycles, an astronaut); the
wheel comes from PyPI with `pip download --no-deps scikit-image` (into benchmarks/.photos, not
committed) and is only unzipped, never installed. The slide is a mosaic of 512² cells, each a window
of one photograph (photographs smaller than a cell are enlarged 2×), flipped and turned at random,
written band by band (never held whole) by tifffile as 256² JPEG tiles (YCbCr 2×2), one level —
`tessera convert OUT.tif --out PYRAMID.tif` makes the pyramid. Needs numpy, tifffile and imagecodecs
(scripts/setup_peers.sh installs them) and pip.
"""
import glob
import io
import os
import subprocess
import sys
import zipfile

import imagecodecs
import numpy as np
import tifffile

PHOTOS = ["ihc.png", "retina.jpg", "hubble_deep_field.jpg", "chelsea.png", "coffee.png", "rocket.jpg",
          "motorcycle_left.png", "motorcycle_right.png", "astronaut.png"]
CELL, TILE = 512, 256


def photographs():
    cache = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".photos")
    wheels = glob.glob(os.path.join(cache, "scikit_image-*.whl"))
    if not wheels:
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", cache,
                        "scikit-image"], check=True)
        wheels = glob.glob(os.path.join(cache, "scikit_image-*.whl"))
    out = []
    with zipfile.ZipFile(wheels[0]) as z:
        for name in PHOTOS:
            data = z.read(f"skimage/data/{name}")
            img = imagecodecs.imread(io.BytesIO(data).getvalue())
            img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
            while min(img.shape[:2]) < CELL:
                img = img.repeat(2, 0).repeat(2, 1)
            out.append(img.astype(np.uint8))
    return out


def crops(out, n):
    """Crops of the same photographs, labelled `histology` (the immunohistochemistry slide) or
    `other`: a training set whose model's heatmap over the mosaic should light up the histology cells."""
    photos = photographs()
    rng = np.random.default_rng(11)
    for label in ["histology", "other"]:
        os.makedirs(os.path.join(out, label), exist_ok=True)
    for i in range(n):
        label = "histology" if i % 2 == 0 else "other"
        p = photos[0] if label == "histology" else photos[1 + rng.integers(len(photos) - 1)]
        y, x = rng.integers(p.shape[0] - 256 + 1), rng.integers(p.shape[1] - 256 + 1)
        w = np.rot90(p[y:y + 256, x:x + 256], rng.integers(4))
        open(os.path.join(out, label, f"{i}.jpg"), "wb").write(imagecodecs.jpeg8_encode(np.ascontiguousarray(w), level=90))
    print(f"{out}: {n} crops (histology, other)")


def main():
    if sys.argv[1] == "crops":
        crops(sys.argv[2], int(sys.argv[3]))
        return
    side, path = int(sys.argv[1]), sys.argv[2]
    quality = int(sys.argv[3]) if len(sys.argv) > 3 else 85
    photos = photographs()
    rng = np.random.default_rng(7)
    cells = (side + CELL - 1) // CELL

    def band(row):
        b = np.empty((CELL, cells * CELL, 3), np.uint8)
        for c in range(cells):
            p = photos[rng.integers(len(photos))]
            y = rng.integers(p.shape[0] - CELL + 1)
            x = rng.integers(p.shape[1] - CELL + 1)
            w = p[y:y + CELL, x:x + CELL]
            w = np.rot90(w, rng.integers(4))
            if rng.integers(2):
                w = w[:, ::-1]
            b[:, c * CELL:(c + 1) * CELL] = w
        return b[:, :side]

    def tiles():
        for row in range(cells):
            b = band(row)
            rows = min(CELL, side - row * CELL)
            for ty in range(0, rows, TILE):
                for tx in range(0, side, TILE):
                    t = np.zeros((TILE, TILE, 3), np.uint8)
                    part = b[ty:ty + TILE, tx:tx + TILE]
                    t[:part.shape[0], :part.shape[1]] = part
                    yield t

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE), bigtiff=True,
                     photometric="rgb", compression="jpeg", compressionargs={"level": quality})
    print(f"{path}: {side}×{side}, {os.path.getsize(path) / 1e6:.0f} MB, from {len(photos)} photographs")


if __name__ == "__main__":
    main()
