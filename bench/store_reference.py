#!/usr/bin/env python3
"""The reference FKD label layout beside fkd's store: size and random-access read speed.

The reference (szq0214/FKD, FKD_SLG/generate_soft_label.py) writes one torch.save file per
image holding [coords, flips, output]: numpy arrays of the N crops' normalized (top, left,
height, width) [N, 4], their flip flags [N] (bool), and the quantized teacher output
[N, 2, k] (row 0 the top-k class indices cast to the value dtype, row 1 their
probabilities). With --use_fp16 the coords and the output are float16 (indices too).

This script builds that layout from the labels bench_core_store dumped (the very same
labels fkd's store holds), in float32 and float16, and reports for each:
  ref DTYPE BYTES_PER_CROP RECORDS_PER_S CROPS_PER_S
Bytes are the files' sizes (not the filesystem blocks they occupy). A read is torch.load of
one random image's file plus recovering int64 indices and float32 values from it, timed in
this thread's CPU time, best of --rounds, with every file page-cached beforehand.

usage: store_reference.py DUMP OUT_DIR --classes C [--images 200] [--crops 500] [--k 5]
"""
import argparse
import os
import random
import shutil
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, required=True)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--crops", type=int, default=500)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reads", type=int, default=150)
    a = ap.parse_args()
    I, N, K = a.images, a.crops, a.k
    raw = open(a.dump, "rb").read()
    off = 0

    def take(dtype, count):
        nonlocal off
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=off)
        off += arr.nbytes
        return arr

    indices = take("<i4", I * N * K).reshape(I, N, K)
    values = take("<f4", I * N * K).reshape(I, N, K)
    coords = take("<f4", I * N * 4).reshape(I, N, 4)
    flips = take("u1", I * N).reshape(I, N).astype(bool)
    assert off == len(raw), "dump size does not match --images/--crops/--k"

    torch.set_num_threads(1)
    for name, dtype in (("fp32", np.float32), ("fp16", np.float16)):
        d = os.path.join(a.out, "ref-" + name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        paths = []
        for i in range(I):
            output = np.stack([indices[i].astype(dtype), values[i].astype(dtype)], axis=1)
            state = [coords[i].astype(dtype), flips[i].copy(), output]
            p = os.path.join(d, "%06d.tar" % i)
            torch.save(state, p)
            paths.append(p)
        size = sum(os.path.getsize(p) for p in paths)
        for p in paths:  # page-cache every file
            with open(p, "rb") as f:
                f.read()
        # Sanity: the files hold the labels.
        c, fl, out = torch.load(paths[0])
        assert (out[:, 0, :].astype(np.int64) == indices[0]).all()
        best = float("inf")
        rng = random.Random(0)
        for _ in range(a.rounds):
            t0 = time.thread_time()
            for _ in range(a.reads):
                c, fl, out = torch.load(paths[rng.randrange(I)])
                idx = out[:, 0, :].astype(np.int64)
                val = out[:, 1, :].astype(np.float32)
            best = min(best, time.thread_time() - t0)
        rate = a.reads / best
        print("ref %s %.3f %.0f %.0f" % (name, size / (I * N), rate, rate * N), flush=True)


if __name__ == "__main__":
    main()
