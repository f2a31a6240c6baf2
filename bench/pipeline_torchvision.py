"""torchvision's training-image pipeline on a folder of JPEGs, one thread: the reference that
bench_core_pipeline is compared with.

usage: pipeline_torchvision.py DIR [--size 224] [--crops 1,2,4] [--rounds 5]

Modes (files are read into memory first; each decode opens them from bytes):
  decode       Image.open + convert("RGB") (PIL's full decode)
  pipeline K   decode, then K times RandomResizedCrop(SIZE) + RandomHorizontalFlip + ToTensor
               + Normalize(ImageNet mean/std)
Timed like bench_core_pipeline: each file goes through every mode in turn, in this thread's
CPU time, with the same random crops in every round; the fastest of --rounds rounds counts,
and rate = files / sum of those times. One line per mode:
  MODE K IMAGES_PER_S CROPS_PER_S MINOR_FAULTS_PER_IMAGE
(faults: getrusage ru_minflt around each timed call, over all rounds, per file and round).
Options it does not know (bench_core_loader's) are ignored. It runs with the allocator
settings fkd runs with (malloc_tunables.py) and prints them on a line "malloc ...".
"""
import argparse
import io
import os
import resource
import time

import malloc_tunables  # (re-executes the script with fkd's malloc settings)

malloc_tunables.apply()

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--crops", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=5)
    args, _ = ap.parse_known_args()
    torch.set_num_threads(1)
    names = sorted(f for f in os.listdir(args.dir) if f.lower().endswith((".jpg", ".jpeg")))
    files = []
    for f in names:
        with open(os.path.join(args.dir, f), "rb") as fh:
            files.append(fh.read())
    crops = [int(c) for c in args.crops.split(",")]
    train = T.Compose(
        [
            T.RandomResizedCrop(args.size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def decode(i):
        return Image.open(io.BytesIO(files[i])).convert("RGB")

    def pipeline(i, k):
        img = decode(i)
        for _ in range(k):
            train(img)

    best = {}
    faults = {}

    def timed(mode, i, work):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.thread_time()
        work()
        t = time.thread_time() - t0
        faults[mode] = faults.get(mode, 0) + resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        best[mode, i] = min(best.get((mode, i), t), t)

    for _ in range(args.rounds):
        for i in range(len(files)):
            timed(0, i, lambda: decode(i))
            for k in crops:
                torch.manual_seed(i * 16 + k)  # the same crops in every round
                timed(k, i, lambda: pipeline(i, k))

    def rate(mode):
        return len(files) / sum(best[mode, i] for i in range(len(files)))

    def per_file(mode):
        return faults[mode] / (len(files) * args.rounds)

    print(f"decode 0 {rate(0):.1f} 0.0 {per_file(0):.1f}")
    for k in crops:
        print(f"pipeline {k} {rate(k):.1f} {rate(k) * k:.1f} {per_file(k):.1f}")
    print(f"malloc {malloc_tunables.describe()}")


if __name__ == "__main__":
    main()
