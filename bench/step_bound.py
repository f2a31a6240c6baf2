#!/usr/bin/env python3
"""The student's own training step with no data pipeline at all: the bound on any trainer's
samples/s for a model, batch and thread count. A fixed random batch on the CPU, SGD with
Nesterov momentum, soft cross-entropy, optionally channels-last and bf16 autocast, as
bench/fkd_torch.py's training step; timed over --steps steps after --warmup.

usage: step_bound.py --model resnet18 --classes 100 --batch-size 16 --input-size 224
                     --threads 2 [--channels-last] [--amp off|bf16] [--steps 12] [--json]
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import fkd_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = fkd_models.make_model(a.model, 3, a.classes).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, a.input_size, a.input_size).contiguous(memory_format=fmt)
    q = torch.softmax(torch.randn(a.batch_size, a.classes), dim=1)
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp == "bf16"):
            logits = model(x)
        loss = -(q * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    r = {"model": a.model, "amp": a.amp, "channels_last": a.channels_last,
         "samples_per_s": a.steps * a.batch_size / secs, "threads": a.threads}
    print(json.dumps(r) if a.json else "%(model)s amp %(amp)s: %(samples_per_s).2f samples/s" % r)


if __name__ == "__main__":
    main()
