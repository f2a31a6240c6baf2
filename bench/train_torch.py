"""The PyTorch way, for comparison: train a zoo model on Fashion-MNIST with a
torchvision pipeline (PIL image -> RandomCrop(28, padding=4) -> RandomHorizontalFlip ->
ToTensor -> Normalize), DataLoader workers, SGD with Nesterov momentum, and report
training samples per second over one epoch.

usage: train_torch.py --model resnet20 --threads 2 --workers 1 --limit 12800
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import fkd_models  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(name):
    with gzip.open(os.path.join(FMNIST, name)) as f:
        data = f.read()
    if name.startswith("train-images") or name.startswith("t10k-images"):
        n, r, c = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, r, c)
    return np.frombuffer(data, np.uint8, offset=8)


class FashionMnist(torch.utils.data.Dataset):
    def __init__(self, limit, transform):
        images = read_idx("train-images-idx3-ubyte.gz")
        labels = read_idx("train-labels-idx1-ubyte.gz")
        idx = [k * len(images) // limit for k in range(limit)] if limit else range(len(images))
        self.images = images[list(idx)]
        self.labels = labels[list(idx)].astype(np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i], "L")), int(self.labels[i])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--limit", type=int, default=12800)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--channels-last", action="store_true",
                   help="model and inputs in torch.channels_last (as fkd does by default)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    transform = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.2860,), (0.3530,))])
    loader = torch.utils.data.DataLoader(FashionMnist(args.limit, transform),
                                         batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    model = fkd_models.make_model(args.model, 1, 10)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in loader:
        x = x.contiguous(memory_format=fmt)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += x.shape[0]
    secs = time.perf_counter() - start
    print(json.dumps({"model": args.model, "samples": seen, "seconds": secs,
                      "samples_per_s": seen / secs}))


if __name__ == "__main__":
    main()
