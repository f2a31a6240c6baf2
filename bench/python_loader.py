#!/usr/bin/env python3
"""The Python module's FKD loader against the reference's FKD data pipeline, on the same
labels.

usage:
  python_loader.py export STORE DATA_ROOT LABEL_DIR
  python_loader.py time DATA_ROOT STORE [--num-crops m] [--batch-size B] [--workers W]
                        [--input-size S] [--channels C] [--passes P] [--json]

export writes the store's labels in the reference's layout (FKD_SLG/generate_soft_label.py),
read through the module: for image i of DATA_ROOT/train (torchvision ImageFolder order, the
store's image ids) one torch.save pickle LABEL_DIR/<class>/<stem>.tar holding
[coords, flips, output]: coords numpy (N, 4) float32, the stored crops' normalized
(i, j, h, w) (Store.crops(i, normalized=True)); flips numpy (N,) bool; output numpy
(N, 2, k) float16, the top-k class ids (as floats) over their probabilities, as stored
(marginal smoothing). bench/fkd_torch.py's FKDFolder (the reference's ImageFolder_FKD:
torch.load per image, m crops picked at random, resized_crop + hflip replay, to_tensor,
normalize, Recover_soft_label) then reads them in a torch DataLoader.

time iterates fkd.Loader(DATA_ROOT, STORE, ...) for P passes (set_epoch) after a warm-up of 5
batches, touching each batch as fkd_torch.py --pipeline-only does, and prints samples (crops)
per second; with --json one line {"impl": "fkd-python", "samples_per_s", "samples",
"seconds", "workers", "num_crops"}.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import malloc_tunables  # noqa: E402  (fkd's malloc settings for both sides alike)

malloc_tunables.apply()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import fkd  # noqa: E402

WARMUP_STEPS = 5


def export(a):
    store = fkd.Store(a.store)
    if store.label_type != "marginal_smoothing":
        sys.exit("%s: export writes marginal smoothing labels; the store holds %s"
                 % (a.store, store.label_type))
    train_root = os.path.join(a.data_root, "train")
    samples = ImageFolder(train_root).samples
    if len(samples) != store.num_images:
        sys.exit("%s has %d images, the store %d" % (train_root, len(samples), store.num_images))
    made = set()
    for i, (path, _) in enumerate(samples):
        coords, flips = store.crops(i, normalized=True)
        idx, val = store.labels(i)
        output = np.stack([idx.astype(np.float32), val], axis=1).astype(np.float16)
        rel = os.path.splitext(os.path.relpath(path, train_root))[0] + ".tar"
        out = os.path.join(a.label_dir, rel)
        d = os.path.dirname(out)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        torch.save([coords, flips, output], out)
    print("%s: %d label files" % (a.label_dir, len(samples)))


def time_loader(a):
    loader = fkd.Loader(a.data_root, a.store, batch_size=a.batch_size, num_crops=a.num_crops,
                        workers=a.workers, input_size=a.input_size, channels=a.channels)
    step, samples, t0, touched = 0, 0, None, 0.0
    for p in range(a.passes + 1):
        loader.set_epoch(p)
        for x, q, _ in loader:
            x, q = torch.from_numpy(x), torch.from_numpy(q)
            touched += float(x[0, 0, 0, 0]) + float(q[0, 0])
            step += 1
            if t0 is not None:
                samples += x.shape[0]
            elif step == WARMUP_STEPS:
                t0 = time.perf_counter()
    secs = time.perf_counter() - t0
    r = {"impl": "fkd-python", "samples_per_s": samples / secs, "samples": samples,
         "seconds": secs, "workers": a.workers, "num_crops": a.num_crops}
    print(json.dumps(r) if a.json else "fkd.Loader: %.1f samples/s (%d crops in %.2f s)"
          % (r["samples_per_s"], samples, secs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("store")
    ex.add_argument("data_root")
    ex.add_argument("label_dir")
    tm = sub.add_parser("time")
    tm.add_argument("data_root")
    tm.add_argument("store")
    tm.add_argument("--num-crops", type=int, default=4)
    tm.add_argument("--batch-size", type=int, default=128)
    tm.add_argument("--workers", type=int, default=1)
    tm.add_argument("--input-size", type=int, default=0)
    tm.add_argument("--channels", type=int, default=0)
    tm.add_argument("--passes", type=int, default=2)
    tm.add_argument("--json", action="store_true")
    a = ap.parse_args()
    export(a) if a.command == "export" else time_loader(a)


if __name__ == "__main__":
    main()
