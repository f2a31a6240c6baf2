"""Writes a small ImageFolder tree for the data tests.

usage: data_make_folder.py ROOT
Creates ROOT/{train,val}/{cat,dog,bird}/ with small JPEG, PNG, BMP, WebP and TIFF images of
varied sizes, grayscale and RGB, and prints one line per train file, in torchvision
ImageFolder order:
"<index> <class index> <relative path>", so the C++ test can compare orderings.
"""
import os
import sys

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

root = sys.argv[1]
rng = np.random.default_rng(7)
for split, n in (("train", 5), ("val", 2)):
    for c, name in enumerate(["cat", "dog", "bird"]):
        d = os.path.join(root, split, name)
        os.makedirs(d, exist_ok=True)
        for k in range(n):
            h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
            if k % 2:
                img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
            else:
                img = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L")
            ext = (".JPG", ".png", ".bmp", ".webp", ".Tiff")[k]
            sub = d if k != 4 else os.path.join(d, "nested")
            os.makedirs(sub, exist_ok=True)
            img.save(os.path.join(sub, f"img_{k:02d}{ext}"), quality=95)
ds = ImageFolder(os.path.join(root, "train"))
for i, (path, label) in enumerate(ds.samples):
    print(i, label, os.path.relpath(path, root))
