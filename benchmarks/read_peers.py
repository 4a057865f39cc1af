#!/usr/bin/env python3
"""The peers of `tessera bench read`: the same patches read by tifffile (+ imagecodecs) and by
OpenSlide, one round each, seconds as JSON on stdout.

  read_peers.py FILE POSITIONS PATCH LEVEL WORKERS CACHE_MIB

tifffile has no region read: tiles are located from the page's offsets, read, decoded by
tifffile's own decoder (imagecodecs) through an LRU cache of CACHE_MIB, and assembled, as a
pathology loader built on tifffile does. OpenSlide reads with read_region (RGBA), one handle per
worker thread. Threads share nothing else; imagecodecs and OpenSlide release the GIL.
"""
import json
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tifffile

path, positions, patch, level, workers, cache_mib = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
xy = [tuple(map(int, line.split())) for line in open(positions) if line.strip()]


def tifffile_round():
    tf = tifffile.TiffFile(path)
    s = tf.series[0]
    page = (s.levels or [s])[level].keyframe
    tw, th = page.tilewidth, page.tilelength
    across = (page.imagewidth + tw - 1) // tw
    cache, lock, limit = OrderedDict(), threading.Lock(), cache_mib << 20
    local = threading.local()

    def tile(i):
        with lock:
            if i in cache:
                cache.move_to_end(i)
                return cache[i]
        if not hasattr(local, "fh"):
            local.fh = open(path, "rb")
        local.fh.seek(page.dataoffsets[i])
        data = local.fh.read(page.databytecounts[i])
        seg = page.decode(data, i, jpegtables=page.jpegtables)[0]
        seg = seg.reshape(th, tw, -1)
        with lock:
            cache[i] = seg
            size = sum(v.nbytes for v in cache.values())
            while size > limit and cache:
                _, v = cache.popitem(last=False)
                size -= v.nbytes
        return seg

    def read(p):
        x, y = p
        out = np.empty((patch, patch, page.samplesperpixel), np.uint8)
        for ty in range(y // th, (y + patch - 1) // th + 1):
            for tx in range(x // tw, (x + patch - 1) // tw + 1):
                seg = tile(ty * across + tx)
                x0, x1 = max(x, tx * tw), min(x + patch, (tx + 1) * tw)
                y0, y1 = max(y, ty * th), min(y + patch, (ty + 1) * th)
                out[y0 - y:y1 - y, x0 - x:x1 - x] = seg[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(read, xy))
    return time.perf_counter() - t0


def openslide_round():
    import openslide
    local = threading.local()
    with openslide.OpenSlide(path) as s0:
        ds = s0.level_downsamples[level]
        cache = openslide.OpenSlideCache(cache_mib << 20)

    def read(p):
        if not hasattr(local, "s"):
            local.s = openslide.OpenSlide(path)
            local.s.set_cache(cache)
        x, y = p
        return local.s.read_region((int(x * ds), int(y * ds)), level, (patch, patch))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(read, xy))
    return time.perf_counter() - t0


out = {"tifffile": tifffile_round()}
try:
    out["openslide"] = openslide_round()
except Exception as e:  # noqa: BLE001 — absent or unable to open the file
    print(f"openslide: {e}", file=sys.stderr)
print(json.dumps(out))
