"""Loads what `fkd export` wrote and checks Python gets the expected predictions.

usage: cli_check_export.py torchscript MODEL.pt EXPECTED_TOP1
       cli_check_export.py state_dict MODEL.pth EXPECTED_TOP1 ZOO_NAME
Runs the model on the 512 Fashion-MNIST test images `fkd eval --limit 512` uses (every
k-th: index k * 10000 // 512) (normalized with the dataset's
mean/std, as fkd evaluates) and prints the top-1 accuracy; exits 1 if it differs from
EXPECTED_TOP1 by more than 0.3 points.
"""
import gzip
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

FMNIST = "/usr/share/datasets/fashion-mnist"


def load(name, offset):
    with gzip.open(os.path.join(FMNIST, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


kind, path, expected = sys.argv[1], sys.argv[2], float(sys.argv[3])
subset = [k * 10000 // 512 for k in range(512)]
x = load("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)[subset].astype(np.float32)
y = torch.from_numpy(load("t10k-labels-idx1-ubyte.gz", 8)[subset].astype(np.int64))
x = (torch.from_numpy(x) / 255.0 - 0.2860) / 0.3530
if kind == "torchscript":
    model = torch.jit.load(path)
else:
    import fkd_models
    model = fkd_models.make_model(sys.argv[4], 1, 10)
    model.load_state_dict(torch.load(path), strict=True)
model.eval()
with torch.no_grad():
    top1 = 100.0 * (model(x).argmax(1) == y).float().mean().item()
print(f"{top1:.2f}")
sys.exit(0 if abs(top1 - expected) <= 0.3 else 1)
