#!/usr/bin/env python3
"""Reads a `tessera train --tensorboard DIR` folder with TensorBoard's own reader and checks it
against the run's metrics.jsonl:

  read_tensorboard.py DIR RUN/metrics.jsonl

Every epoch line must appear as scalars at the step the epoch ended on (epoch/loss, epoch/accuracy,
epoch/lr, epoch/images_per_second, epoch/peak_bytes, epoch/epoch, and epoch/val_loss and
epoch/val_accuracy with held-out images), every step line as step/loss and step/lr at its step —
equal as float32. Prints one JSON object (tags, events, compared, mismatches); exit 1 on a mismatch.
scripts/setup_peers.sh installs tensorboard into .venv-peers.
"""
import json
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

directory, metrics = sys.argv[1], sys.argv[2]
acc = EventAccumulator(directory, size_guidance={"scalars": 0})
acc.Reload()
tags = acc.Tags()["scalars"]
# The last value written at each (tag, step): a resumed run may write an epoch twice.
values = {}
for tag in tags:
    for e in acc.Scalars(tag):
        values[(tag, e.step)] = e.value

compared, mismatches = 0, []


def check(tag, step, expected):
    global compared
    if expected is None:
        return
    got = values.get((tag, step))
    want = float(np.float32(expected))
    compared += 1
    if got is None or float(np.float32(got)) != want:
        mismatches.append({"tag": tag, "step": step, "tensorboard": got, "metrics": want})


for line in open(metrics):
    line = line.strip()
    if not line:
        continue
    o = json.loads(line)
    if o.get("kind") == "step":
        check("step/loss", o["step"], o.get("loss"))
        check("step/lr", o["step"], o.get("lr"))
        continue
    s = o["step"]
    for key in ["loss", "accuracy", "lr", "images_per_second", "peak_bytes", "epoch", "val_loss", "val_accuracy"]:
        check(f"epoch/{key}", s, o.get(key))

print(json.dumps({"tags": sorted(tags), "events": len(values), "compared": compared, "mismatches": mismatches}))
sys.exit(1 if mismatches or compared == 0 else 0)
