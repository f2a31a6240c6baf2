"""The PyTorch way of generating FKD soft labels, for comparison with `fkd label`.

For each training image: N RandomResizedCrop + RandomHorizontalFlip crops (torchvision, PIL),
ToTensor + Normalize, the teacher on the crops in batches, softmax, top-k (marginal
smoothing) kept. Teacher modes: eager (the reference runs the teacher as an nn.Module; here
the TorchScript file it came from, unfrozen), and frozen + optimize_for_inference.

usage: label_torch.py TEACHER.pt --mode eager|optimized --images 200 --crops 50 --threads 2
prints one JSON line with crops/s and the fraction of wall time in the teacher.
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

FMNIST = "/usr/share/datasets/fashion-mnist"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("teacher")
    p.add_argument("--mode", default="eager")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--crops", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--topk", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with gzip.open(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    subset = [k * len(images) // a.images for k in range(a.images)]
    model = torch.jit.load(a.teacher).eval()
    if a.mode == "optimized":
        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    tf = T.Compose([T.RandomResizedCrop(28), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.2860,), (0.3530,))])
    teacher_s = 0.0
    pending = []
    start = time.perf_counter()
    crops = 0

    def flush(xs):
        nonlocal teacher_s
        t0 = time.perf_counter()
        with torch.no_grad():
            prob = torch.softmax(model(torch.stack(xs)), dim=1)
        teacher_s += time.perf_counter() - t0
        return prob.topk(a.topk, dim=1)

    for i in subset:
        img = Image.fromarray(images[i], "L")
        pending.extend(tf(img) for _ in range(a.crops))
        crops += a.crops
        while len(pending) >= a.batch:
            flush(pending[:a.batch])
            pending = pending[a.batch:]
    if pending:
        flush(pending)
    secs = time.perf_counter() - start
    print(json.dumps({"mode": a.mode, "crops": crops, "seconds": secs, "crops_per_s": crops / secs,
                      "teacher_busy": teacher_s / secs}))


if __name__ == "__main__":
    main()
