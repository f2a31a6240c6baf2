# A small CNN trained in plain PyTorch on fkd's FKD loader and label store, then evaluated on
# the Fashion-MNIST test images: under a minute on a CPU (the README says what a full-scale
# run needs).
import gzip
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import fkd

FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def small_cnn(channels, classes):
    def conv(cin, cout):
        return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout), torch.nn.ReLU(inplace=True)]

    return torch.nn.Sequential(*conv(channels, 16), torch.nn.MaxPool2d(2), *conv(16, 32),
                               torch.nn.MaxPool2d(2), *conv(32, 64),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(64, classes))


def train(labels, data="fashion-mnist", epochs=16, num_crops=4, batch_size=128, lr=0.05,
          max_steps=0):
    loader = fkd.Loader(data, labels, batch_size=batch_size, num_crops=num_crops, workers=2)
    model = small_cnn(loader.channels, loader.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    passes = -(-epochs // num_crops)  # one pass over the images counts as num_crops epochs
    steps = passes * len(loader)
    warmup = min(steps // 4, len(loader) // 2) + 1  # linear warm-up, then cosine to 0

    def rate(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    losses = []
    model.train()
    for p in range(passes):
        loader.set_epoch(p)  # this pass's sample order and stored crops
        for images, soft_labels, _targets in loader:
            x, q = torch.from_numpy(images), torch.from_numpy(soft_labels)  # no copies
            loss = -(q * F.log_softmax(model(x), dim=1)).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) == max_steps:
                return model, loader, losses
        print(f"pass {p + 1}/{passes}: loss {sum(losses[-len(loader):]) / len(loader):.4f}")
    return model, loader, losses


def test_images(limit=0):
    """Fashion-MNIST's test images (n, 1, 28, 28) uint8 and labels (n,): `limit` of them
    spread over the split, as `fkd eval --limit` takes them (0 = all 10,000)."""
    def idx(name, offset):
        with gzip.open(os.path.join(FMNIST, name)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    images = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = idx("t10k-labels-idx1-ubyte.gz", 8)
    keep = fkd.subset_indices(len(labels), limit)
    return images[keep], labels[keep]


@torch.no_grad()
def accuracy(model, loader, limit=0):
    """Top-1 (%) on the test images, normalized as the loader normalizes training crops."""
    images, labels = test_images(limit)
    mean = torch.tensor(loader.mean).view(1, -1, 1, 1)
    std = torch.tensor(loader.std).view(1, -1, 1, 1)
    model.eval()
    hits = 0
    for k in range(0, len(labels), 1000):
        x = (torch.from_numpy(images[k:k + 1000]).float() / 255 - mean) / std
        hits += (model(x).argmax(1).numpy() == labels[k:k + 1000]).sum()
    return 100.0 * hits / len(labels)


if __name__ == "__main__":
    torch.manual_seed(0)
    model, loader, _ = train(sys.argv[1])  # a store made by fkd label on Fashion-MNIST
    print(f"test top-1 {accuracy(model, loader):.2f}%")
