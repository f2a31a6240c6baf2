"""Loads what `fkd export` wrote and checks Python gets the expected predictions.

usage: cli_check_export.py torchscript MODEL.pt EXPECTED_TOP1
       cli_check_export.py state_dict MODEL.pth EXPECTED_TOP1 ZOO_NAME
Reads the input the model expects from the export's fkd.json with the function
docs/checkpoint.md gives (and, for TorchScript, with torch.jit.load's _extra_files), checks
it is what fkd trained a Fashion-MNIST model on, then runs the model on the 512
Fashion-MNIST test images `fkd eval --limit 512` uses (every k-th: index k * 10000 // 512),
normalized with the metadata's mean/std, and prints the top-1 accuracy; exits 1 if it
differs from EXPECTED_TOP1 by more than 0.3 points.
"""
import gzip
import json
import os
import re
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "python"))

FMNIST = "/usr/share/datasets/fashion-mnist"


def docs_metadata_reader():
    """fkd_metadata, as docs/checkpoint.md's "Exports" section writes it."""
    with open(os.path.join(ROOT, "docs", "checkpoint.md")) as f:
        text = f.read()
    block = re.search(r"```python\n(.*?)```", text[text.index("## Exports"):], re.S).group(1)
    scope = {}
    exec(block, scope)
    return scope["fkd_metadata"]


def load(name, offset):
    with gzip.open(os.path.join(FMNIST, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


kind, path, expected = sys.argv[1], sys.argv[2], float(sys.argv[3])
meta = docs_metadata_reader()(path)
want = {"format": "fkd-export", "version": 1, "export": kind, "weights": "model",
        "channels": 1, "input_size": 28, "mean": [0.286], "std": [0.353],
        "interpolation": "bilinear", "eval": {"resize": 28, "center_crop": 28},
        "train_crop": {"sampler": "random_crop", "size": 28, "padding": 4, "flip": 0.5}}
for key, value in want.items():
    if meta[key] != value:
        sys.exit("fkd.json %s: %r, expected %r" % (key, meta[key], value))
if meta["classes"][0] != "T-shirt/top" or len(meta["classes"]) != 10:
    sys.exit("fkd.json classes: %r" % meta["classes"])

subset = [k * 10000 // 512 for k in range(512)]
x = load("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)[subset].astype(np.float32)
y = torch.from_numpy(load("t10k-labels-idx1-ubyte.gz", 8)[subset].astype(np.int64))
mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
x = (torch.from_numpy(x) / 255.0 - mean) / std
if kind == "torchscript":
    extra = {"fkd.json": ""}
    model = torch.jit.load(path, _extra_files=extra)
    if json.loads(extra["fkd.json"]) != meta:
        sys.exit("torch.jit.load's _extra_files gives another fkd.json")
else:
    import fkd_models
    model = fkd_models.make_model(sys.argv[4], 1, 10)
    model.load_state_dict(torch.load(path), strict=True)
model.eval()
with torch.no_grad():
    top1 = 100.0 * (model(x).argmax(1) == y).float().mean().item()
print(f"{top1:.2f}")
sys.exit(0 if abs(top1 - expected) <= 0.3 else 1)
