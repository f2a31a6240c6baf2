#!/usr/bin/env python3
"""A TorchScript teacher's forward pass alone, as a PyTorch user runs it: the bound on any
labeler's crops/s for that file, batch and thread count. The file loaded with torch.jit.load,
a fixed random batch (channels-last with --channels-last), no autograd, optionally under
torch.autocast("cpu", dtype=torch.bfloat16); timed over --batches batches after --warmup.

usage: teacher_bound.py TEACHER.pt --input-size 224 --channels 3 --batch 32 --threads 2
                        [--channels-last] [--amp off|bf16] [--frozen] [--batches 6] [--json]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import malloc_tunables  # noqa: E402  (re-executes the script with fkd's malloc settings)

malloc_tunables.apply()

import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("teacher")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--frozen", action="store_true", help="torch.jit.freeze the file first")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torch.jit.load(a.teacher).eval()
    if a.frozen:
        model = torch.jit.freeze(model)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = torch.randn(a.batch, a.channels, a.input_size, a.input_size).contiguous(memory_format=fmt)
    t0 = None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp == "bf16"):
        for b in range(a.warmup + a.batches):
            if b == a.warmup:
                t0 = time.perf_counter()
            model(x).float()
    secs = time.perf_counter() - t0
    r = {"amp": a.amp, "channels_last": a.channels_last, "frozen": a.frozen,
         "crops_per_s": a.batches * a.batch / secs, "threads": a.threads,
         "malloc": malloc_tunables.describe()}
    print(json.dumps(r) if a.json else f"{r['crops_per_s']:.1f} crops/s")


if __name__ == "__main__":
    main()
