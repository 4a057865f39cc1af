#!/usr/bin/env python3
"""tifffile's view of a TIFF, the independent reference for Tessera's TIFF reader.

  tiff_reference.py info FILE                      JSON: levels (shape, tile), compression, bigTIFF
  tiff_reference.py regions FILE OUT L X Y W H ...  raw pixels of each region (H, W, C; uint8, or
                                                   uint16 little-endian), concatenated, into OUT
  tiff_reference.py fixtures DIR                   writes TIFFs in the layouts tifffile makes: a
                                                   SubIFD pyramid, separate planes, 16-bit gray
                                                   strips, BigTIFF RGBA, JPEG tiles, MinIsWhite

Needs tifffile and numpy (imagecodecs for JPEG): scripts/setup_peers.sh installs them.
"""
import json
import sys

import numpy as np
import tifffile


def hwc(lv, a):
    """(H, W, C) or (H, W) whatever the planar configuration."""
    if a.ndim == 3 and lv.keyframe.planarconfig == 2:
        a = np.moveaxis(a, 0, -1)
    return a


def levels(path):
    with tifffile.TiffFile(path) as t:
        s = t.series[0]
        return [hwc(lv, lv.asarray()) for lv in (s.levels or [s])]


def info(path):
    with tifffile.TiffFile(path) as t:
        s = t.series[0]
        out = []
        for lv in s.levels or [s]:
            p = lv.keyframe
            out.append({"shape": [p.imagelength, p.imagewidth], "tile": [p.tilewidth, p.tilelength] if p.is_tiled else None})
        p0 = t.pages[0]
        print(json.dumps({"levels": out, "compression": int(p0.compression), "bigTIFF": t.is_bigtiff,
                          "bitsPerSample": int(p0.bitspersample)}))


def regions(path, out, nums):
    lv = levels(path)
    with open(out, "wb") as f:
        for i in range(0, len(nums), 5):
            L, x, y, w, h = nums[i:i + 5]
            a = lv[L][y:y + h, x:x + w]
            if a.ndim == 2:
                a = a[:, :, None]
            f.write(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"))).tobytes())


def fixtures(d):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:420]
    rgb = np.stack([(xx * 255 // 419), (yy * 255 // 299), (xx ^ yy) & 255], -1).astype(np.uint8)
    rgb[::7, ::5] = rng.integers(0, 256, rgb[::7, ::5].shape, dtype=np.uint8)
    # A pyramid in SubIFDs (as OME-TIFF and tifffile write them), deflate.
    with tifffile.TiffWriter(f"{d}/subifds.tif") as w:
        w.write(rgb, tile=(64, 64), compression="deflate", subifds=2, photometric="rgb")
        w.write(rgb[::2, ::2], tile=(64, 64), compression="deflate", subfiletype=1, photometric="rgb")
        w.write(rgb[::4, ::4], tile=(64, 64), compression="deflate", subfiletype=1, photometric="rgb")
    # Separate planes, LZW, tiled.
    tifffile.imwrite(f"{d}/planar.tif", np.moveaxis(rgb, -1, 0), tile=(32, 48), compression="lzw",
                     planarconfig="separate", photometric="rgb")
    # 16-bit gray in strips, no compression.
    g16 = (xx * 150 + yy * 17).astype(np.uint16)
    tifffile.imwrite(f"{d}/gray16.tif", g16, rowsperstrip=37, photometric="minisblack")
    # BigTIFF, RGBA, tiled.
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], -1)
    tifffile.imwrite(f"{d}/bigrgba.tif", rgba, bigtiff=True, tile=(64, 64), photometric="rgb", extrasamples=[2])
    # MinIsWhite gray, tiled.
    tifffile.imwrite(f"{d}/miniswhite.tif", rgb[:, :, 0], tile=(64, 64), photometric="miniswhite")
    # JPEG tiles (YCbCr), when imagecodecs is there.
    try:
        tifffile.imwrite(f"{d}/jpeg.tif", rgb, tile=(64, 64), compression="jpeg", compressionargs={"level": 90}, photometric="ycbcr")
        # RGB stored as RGB in JPEG (as Aperio SVS files often are), and gray JPEG tiles.
        tifffile.imwrite(f"{d}/jpegrgb.tif", rgb, tile=(64, 64), compression="jpeg", compressionargs={"level": 90}, photometric="rgb")
        tifffile.imwrite(f"{d}/jpeggray.tif", rgb[:, :, 1], tile=(64, 64), compression="jpeg", compressionargs={"level": 90},
                         photometric="minisblack")
    except Exception as e:  # noqa: BLE001
        print(f"no JPEG fixture: {e}", file=sys.stderr)
    # Float samples (refused by name).
    tifffile.imwrite(f"{d}/float.tif", rgb[:, :, 0].astype(np.float32), tile=(64, 64))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "info":
        info(sys.argv[2])
    elif cmd == "regions":
        regions(sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4:]])
    elif cmd == "fixtures":
        fixtures(sys.argv[2])
