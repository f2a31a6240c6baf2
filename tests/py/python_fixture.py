"""Makes the label stores the Python module's tests read (tests/py/python_*.py).

usage: python_fixture.py WORK FKD
In WORK (emptied first): a traced 1-channel teacher and `fkd label --limit 96` of
Fashion-MNIST (96 training images spread over the split, fkd.subset_indices(60000, 96);
8 crops each, marginal smoothing top-5 fp16) in
WORK/fmnist-store; a small ImageFolder of varied-size RGB JPEGs (3 classes) in WORK/folder
and a traced 3-channel teacher's full fp32 labels of it (6 crops each, RandomResizedCrop at
32 px) in WORK/folder-store. The teachers have random weights: the tests compare, they do not learn.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image


def teacher(path, channels, size, classes):
    torch.manual_seed(channels)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, classes)).eval()
    # Logits spread enough that the top-5 probabilities differ from image to image.
    with torch.no_grad():
        model[4].weight.mul_(20)
    torch.jit.trace(model, torch.randn(1, channels, size, size)).save(path)


def folder(root):
    rng = np.random.default_rng(11)
    for split, n in (("train", 8), ("val", 1)):
        for c in range(3):
            d = os.path.join(root, split, "class%d" % c)
            os.makedirs(d, exist_ok=True)
            for k in range(n):
                h, w = int(rng.integers(36, 90)), int(rng.integers(36, 90))
                pix = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pix, "RGB").save(os.path.join(d, "img%d.jpg" % k), quality=90)


def main():
    work, fkd = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, FKD_PROGRESS="off", OMP_WAIT_POLICY="passive")
    teacher(os.path.join(work, "teacher1.pt"), 1, 28, 10)
    subprocess.run([fkd, "label", "--teacher", os.path.join(work, "teacher1.pt"),
                    "--data", "fashion-mnist", "--limit", "96", "--crops", "8",
                    "--out", os.path.join(work, "fmnist-store"), "--threads", "1"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    folder(os.path.join(work, "folder"))
    teacher(os.path.join(work, "teacher3.pt"), 3, 32, 3)
    subprocess.run([fkd, "label", "--teacher", os.path.join(work, "teacher3.pt"),
                    "--data", os.path.join(work, "folder"), "--crops", "6", "--aug", "rrc",
                    "--input-size", "32", "--label-type", "full", "--precision", "fp32",
                    "--out", os.path.join(work, "folder-store"), "--threads", "1"],
                   check=True, env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
