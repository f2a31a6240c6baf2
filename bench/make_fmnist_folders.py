#!/usr/bin/env python3
"""Writes Fashion-MNIST as a torchvision ImageFolder tree, the input of the FKD
benchmarks (bench/fkd_torch.py beside fkd on the same files).

usage: make_fmnist_folders.py OUT --format png28|jpeg64 [--limit-train N] [--limit-val N]

Reads the IDX files of the Debian package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist) and writes
  OUT/train/<class>/<NNNNN>.png|jpg   from train-images-idx3-ubyte.gz
  OUT/val/<class>/<NNNNN>.png|jpg     from t10k-images-idx3-ubyte.gz
where NNNNN is the image's index in its split and the class folders ("0_T-shirt_top" ...
"9_Ankle_boot") sort in label order, so ImageFolder's class indices are the labels.
Formats:
  png28   the 28x28 grayscale originals, PNG (one channel, lossless)
  jpeg64  upscaled to 64x64 with PIL bilinear, converted to RGB, JPEG quality 90 (a
          three-channel image that costs a real decode)
--limit-train / --limit-val keep the first N images of each split (0 = all).
The tree is complete when OUT/.done exists and holds these settings; a run that finds it so
exits at once. Otherwise OUT/train and OUT/val are rewritten from scratch.
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image

FMNIST = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle_boot"]
SPLITS = (("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          ("val", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


def read_idx(name):
    """An IDX file as a numpy uint8 array (images [n, rows, cols], labels [n])."""
    with gzip.open(os.path.join(FMNIST, name)) as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic == 2051:
        n, r, c = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, count=n * r * c, offset=16).reshape(n, r, c)
    if magic == 2049:
        n = int.from_bytes(data[4:8], "big")
        return np.frombuffer(data, np.uint8, count=n, offset=8)
    raise ValueError("%s: not an IDX uint8 image or label file (magic %d)" % (name, magic))


def folder(label):
    return "%d_%s" % (label, CLASSES[label])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--format", choices=("png28", "jpeg64"), required=True)
    ap.add_argument("--limit-train", type=int, default=0, help="first N training images (0 = all)")
    ap.add_argument("--limit-val", type=int, default=0, help="first N validation images (0 = all)")
    a = ap.parse_args()

    settings = {"format": a.format, "limit_train": a.limit_train, "limit_val": a.limit_val}
    marker = os.path.join(a.out, ".done")
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                done = json.load(f)
        except (OSError, ValueError):
            done = None
        if (isinstance(done, dict) and done.get("settings") == settings
                and all(os.path.isdir(os.path.join(a.out, s)) for s, _, _ in SPLITS)):
            print("%s: complete (%s), nothing to do" % (a.out, a.format))
            return
        os.remove(marker)

    ext = ".png" if a.format == "png28" else ".jpg"
    counts = {}
    start = time.perf_counter()
    written = 0
    for split, images_name, labels_name in SPLITS:
        images, labels = read_idx(images_name), read_idx(labels_name)
        assert len(images) == len(labels), "image and label counts differ"
        limit = a.limit_train if split == "train" else a.limit_val
        n = min(limit, len(images)) if limit > 0 else len(images)
        root = os.path.join(a.out, split)
        shutil.rmtree(root, ignore_errors=True)
        for label in range(len(CLASSES)):
            os.makedirs(os.path.join(root, folder(label)))
        for idx in range(n):
            img = Image.fromarray(images[idx], "L")
            path = os.path.join(root, folder(int(labels[idx])), "%05d%s" % (idx, ext))
            if a.format == "png28":
                img.save(path, format="PNG")
            else:
                img.resize((64, 64), Image.BILINEAR).convert("RGB").save(path, format="JPEG",
                                                                         quality=90)
            written += 1
            if written % 10000 == 0:
                print("%d images (%.1f s)" % (written, time.perf_counter() - start), flush=True)
        counts[split] = n

    with open(marker, "w") as f:
        json.dump({"settings": settings, "images": counts}, f)
        f.write("\n")
    print("%s: %d train + %d val images (%s) in %.1f s" % (
        a.out, counts["train"], counts["val"], a.format, time.perf_counter() - start))


if __name__ == "__main__":
    sys.exit(main())
