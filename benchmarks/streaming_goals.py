#!/usr/bin/env python3
"""#13's streaming goals in alternating rounds: fcn-large, batch 1, each mode's seconds per step
beside the plain step of the same round, its ratio, the median, and the planner's estimate.

  python3 benchmarks/streaming_goals.py [--size 4096] [--tile 2048] [--rounds 3] [--compute fp32 bf16]
                                        [--binaries A B] [--more]   (before/after: each round runs both)

Build with `swift build -c release --product tessera` first (default binary .build/release/tessera).
Each round runs every (binary, compute, mode) once, in order, so drift of the machine falls on all alike.
"""
import argparse, json, os, statistics, subprocess, sys

MODES = [  # label, extra flags (the tile is added)
    ("plain", None),
    ("stem streamed", ["--stream-blocks", "1"]),
    ("3 blocks, three segments (1,2)", ["--stream-blocks", "3", "--stream-split", "1,2"]),
    ("3 blocks, frozen BN", ["--stream-blocks", "3", "--stream-split", "0", "--frozen-bn"]),
    ("3 blocks, frozen BN, 3 tiles kept", ["--stream-blocks", "3", "--stream-split", "0", "--frozen-bn",
                                          "--kept-tiles", "3"]),
]
MORE = [  # --more: the rest of the cost model's rows
    ("3 blocks, one segment", ["--stream-blocks", "3", "--stream-split", "0"]),
    ("3 blocks as stem, stage1-2 (cut 1)", ["--stream-blocks", "3", "--stream-split", "1"]),
    ("6 blocks, one segment", ["--stream-blocks", "6", "--stream-split", "0"]),
]

def run(binary, size, tile, steps, compute, flags):
    cmd = [binary, "bench", "train", "--model", "fcn-large", "--input", f"3x{size}x{size}", "--batch", "1",
           "--steps", str(steps), "--warmup", "1", "--compute", compute, "--json"]
    if flags is not None:
        cmd += ["--tile", str(tile)] + flags
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"cannot run {binary}: {e.strerror} (build it: swift build -c release --product tessera)")
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr.strip()}")
    return json.loads(out.stdout)

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--compute", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--binaries", nargs="+", default=[".build/release/tessera"])
    p.add_argument("--more", action="store_true", help="also one segment, one cut, and six blocks")
    a = p.parse_args()
    modes = MODES + (MORE if a.more else [])
    secs = {}  # (binary, compute, label) -> [s/step per round]
    est, peak = {}, {}
    for r in range(a.rounds):
        for b in a.binaries:
            for c in a.compute:
                for label, flags in modes:
                    d = run(b, a.size, a.tile, a.steps, c, flags)
                    key = (b, c, label)
                    secs.setdefault(key, []).append(d["seconds_per_step"])
                    est[key], peak[key] = d.get("estimated_relative_time", ""), d["peak_bytes"]
                    print(f"round {r + 1} {b} {c:5} {label:34} {d['seconds_per_step']:.3f} s  peak {d['peak_bytes']:,} B"
                          f" (planned {d['planned_peak_bytes']:,})", file=sys.stderr, flush=True)
    print(f"| binary | compute | mode ({a.size}², tile {a.tile}) | s/step (rounds) | × plain (rounds) | × plain, median "
          f"| est. × | ledger peak B |")
    print("|---|---|---|---|---|---|---|---|")
    for b in a.binaries:
        for c in a.compute:
            plain = secs[(b, c, "plain")]
            for label, _ in modes:
                s, e = secs[(b, c, label)], est[(b, c, label)]
                ratios = [x / y for x, y in zip(s, plain)]
                print(f"| {os.path.basename(b)} | {c} | {label} | {', '.join(f'{x:.2f}' for x in s)} "
                      f"| {', '.join(f'{x:.2f}' for x in ratios)} | **{statistics.median(ratios):.2f}** "
                      f"| {f'{e:.2f}' if isinstance(e, float) else e} | {peak[(b, c, label)]:,} |")

if __name__ == "__main__":
    main()
