#!/usr/bin/env python3
"""FKD student training the way the reference PyTorch code (szq0214/FKD) does it, for
speed comparisons with `fkd` on the same ImageFolder tree (bench/make_fmnist_folders.py).

usage:
  fkd_torch.py make-labels DATA_ROOT LABEL_DIR --crops N [--classes C] [--k 5]
                           [--scale 0.35 1.0] [--fp16] [--seed S] [--signal 3.0]
  fkd_torch.py train DATA_ROOT LABEL_DIR [--model tiny] [--num-crops m] [--batch-size 128]
                     [--epochs E] [--workers W] [--threads T] [--lr 0.1] [--input-size S]
                     [--channels-last] [--pipeline-only] [--max-batches B] [--json]
                     [--plain] [--amp off|bf16]

make-labels writes the reference label layout (FKD_SLG/generate_soft_label.py): for every
image of DATA_ROOT/train, in torchvision ImageFolder order, one torch.save pickle
LABEL_DIR/<class>/<stem>.tar holding the list [coords, flips, output]:
  coords  numpy [N, 4], the crops' normalized (i/H, j/W, h/H, w/W) from
          RandomResizedCrop.get_params(scale, ratio 3/4..4/3)
  flips   numpy bool [N], each true with p = 0.5
  output  numpy [N, 2, k], marginal smoothing top-k: row 0 the class indices cast to the
          value dtype, row 1 their probabilities
float32, or float16 for coords and output with --fp16. No teacher runs: the benchmark
measures speed, for which only the files' shapes and dtypes matter, so the probabilities are
a softmax of standard-normal logits with the image's own class raised by --signal (default
3; 0 = pure noise), enough for a student's loss to fall visibly. Deterministic:
torch.manual_seed(S), one pass in file order.

train --plain runs plain supervised training the torchvision way instead (RandomResizedCrop,
flip, ToTensor, Normalize in DataLoader workers; cross-entropy on class labels); --amp bf16
runs the forward pass under torch.autocast("cpu", bfloat16), the loss in float32.

train runs the reference student loop (train_FKD.py + utils_FKD.py ImageFolder_FKD):
a Dataset whose __getitem__ torch.loads the image's label file, PIL-opens the image
(mode 'L' or 'RGB', after the first image), draws m crop indices with random.sample, and
per crop replays it exactly: resized_crop(top=int(i*H), left=int(j*W), height=int(h*H),
width=int(w*W), size [S, S], bilinear), hflip if flagged, to_tensor, normalize (Fashion-MNIST
0.2860/0.3530 for one channel, ImageNet mean/std for three); the crop's dense soft label is
recovered with marginal smoothing (top-k probabilities at their indices, (1 - their sum) /
(C - k) everywhere else). A DataLoader (batch_size // m images per step, shuffle,
W workers, persistent when W > 0) concatenates them to a step of batch_size crops, which
feeds either nothing (--pipeline-only: the loop only touches the tensors) or the zoo model
(python/fkd_models.py): SGD (momentum 0.9, Nesterov, weight decay 5e-4), learning rate
cosine-annealed per step from --lr over the run, loss = batch mean of
-sum_c q_c log_softmax(z)_c, optionally channels_last model and input.
Epochs count the reference's way: one pass over the images is m epochs, so --epochs E runs
ceil(E / m) passes. torch.set_num_threads(T) sets the main process's threads (the
DataLoader runs its workers with one each). The process runs with the glibc malloc settings
fkd uses (malloc_tunables.py), so speed ratios to fkd do not measure glibc.

Timing: wall clock (perf_counter) from the end of the 5th step (warm-up: worker start,
first file reads, allocator) to the end of the last one; the run stops after --max-batches
steps in all, warm-up included, if given. samples = the crops of the timed steps. Prints
one line at the end, or with --json
  {"mode": "pipeline"|"train", "samples_per_s", "samples", "seconds", "workers", "threads",
   "num_crops"}
and in train mode each pass's mean loss on stderr.
"""
import argparse
import functools
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import malloc_tunables  # noqa: E402  (re-executes the script with fkd's malloc settings)

malloc_tunables.apply()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402
from torchvision.transforms import InterpolationMode, RandomResizedCrop  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import fkd_models  # noqa: E402

MEAN_STD = {1: ((0.2860,), (0.3530,)),
            3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
WARMUP_STEPS = 5


def label_path(label_dir, train_root, image_path):
    """LABEL_DIR/<class>/<stem>.tar for DATA_ROOT/train/<class>/<stem>.<ext>."""
    rel = os.path.relpath(image_path, train_root)
    return os.path.join(label_dir, os.path.splitext(rel)[0] + ".tar")


def make_labels(a):
    train_root = os.path.join(a.data_root, "train")
    folder = ImageFolder(train_root)  # only its file list and class order
    classes = a.classes or len(folder.classes)
    if not 0 < a.k < classes:
        sys.exit("--k must be in 1..classes-1 (classes %d, k %d)" % (classes, a.k))
    dtype = np.float16 if a.fp16 else np.float32
    ratio = (3.0 / 4.0, 4.0 / 3.0)
    scale = tuple(a.scale)
    torch.manual_seed(a.seed)
    start = time.perf_counter()
    total_bytes = 0
    made = set()
    for n, (path, target) in enumerate(folder.samples, 1):
        with Image.open(path) as img:  # lazy: the header gives the size
            W, H = img.size
            boxes = [RandomResizedCrop.get_params(img, scale, ratio) for _ in range(a.crops)]
        coords = np.array([(i / H, j / W, h / H, w / W) for i, j, h, w in boxes], dtype=dtype)
        flips = (torch.rand(a.crops) < 0.5).numpy()
        logits = torch.randn(a.crops, classes)
        logits[:, target] += a.signal
        prob = torch.softmax(logits, dim=1)
        val, idx = prob.topk(a.k, dim=1)
        output = torch.stack([idx.to(val.dtype), val], dim=1).numpy().astype(dtype)
        out = label_path(a.label_dir, train_root, path)
        d = os.path.dirname(out)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        torch.save([coords, flips, output], out)
        total_bytes += os.path.getsize(out)
        if n % 10000 == 0:
            print("%d images (%.1f s)" % (n, time.perf_counter() - start), flush=True)
    n = len(folder.samples)
    secs = time.perf_counter() - start
    print("%s: %d label files, %d crops each, k %d, %s, %.1f bytes/crop, %.1f s (%.0f images/s)"
          % (a.label_dir, n, a.crops, a.k, "fp16" if a.fp16 else "fp32",
             total_bytes / max(1, n * a.crops), secs, n / secs if secs > 0 else 0.0))


def open_image(path, mode):
    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


class FKDFolder(ImageFolder):
    """DATA_ROOT/train with its stored crops: item = (images [m, C, S, S], soft labels [m, K])."""

    def __init__(self, root, label_dir, num_crops, size, mode):
        super().__init__(root, loader=functools.partial(open_image, mode=mode))
        self.label_dir = label_dir
        self.num_crops = num_crops
        self.size = [size, size]
        self.num_classes = len(self.classes)
        self.mean, self.std = MEAN_STD[1 if mode == "L" else 3]

    def __getitem__(self, index):
        path, _ = self.samples[index]
        coords, flips, output = torch.load(label_path(self.label_dir, self.root, path))
        picks = random.sample(range(len(coords)), self.num_crops)
        img = self.loader(path)
        W, H = img.size
        crops = []
        for c in picks:
            i, j, h, w = (float(v) for v in coords[c])
            x = TF.resized_crop(img, int(i * H), int(j * W), int(h * H), int(w * W), self.size,
                                InterpolationMode.BILINEAR)
            if flips[c]:
                x = TF.hflip(x)
            crops.append(TF.normalize(TF.to_tensor(x), self.mean, self.std))
        label = torch.from_numpy(output[picks].astype(np.float32))  # [m, 2, k]
        return torch.stack(crops), recover_marginal_smoothing(label, self.num_classes)


class PlainFolder(ImageFolder):
    """DATA_ROOT/train the torchvision way: item = (RandomResizedCrop + flip image [1, C, S, S],
    class [1]), for plain supervised training (--plain)."""

    def __init__(self, root, size, mode):
        mean, std = MEAN_STD[1 if mode == "L" else 3]
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(mean, std)])
        super().__init__(root, transform=tf, loader=functools.partial(open_image, mode=mode))

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x.unsqueeze(0), torch.tensor([y])


def recover_marginal_smoothing(label, num_classes):
    """[n, 2, k] (indices, probabilities) -> [n, num_classes] dense soft labels."""
    index = label[:, 0, :].long()
    value = label[:, 1, :]
    k = index.shape[1]
    minor = (1.0 - value.sum(dim=1, keepdim=True)) / (num_classes - k)
    return minor.expand(-1, num_classes).contiguous().scatter_(1, index, value)


def concat_collate(batch):
    return torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch])


def image_mode(root):
    """'L' for one-channel data, 'RGB' otherwise, after the tree's first image."""
    samples = ImageFolder(root).samples
    if not samples:
        sys.exit("%s: no images" % root)
    with Image.open(samples[0][0]) as img:
        return ("L" if img.mode in ("L", "1", "I;16", "I", "F") else "RGB"), img.size


def train(a):
    if a.num_crops < 1 or a.batch_size < a.num_crops:
        sys.exit("need 1 <= --num-crops <= --batch-size")
    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    root = os.path.join(a.data_root, "train")
    mode, (w0, h0) = image_mode(root)
    size = a.input_size or h0
    channels = 1 if mode == "L" else 3
    if a.plain:
        a.num_crops = 1
        dataset = PlainFolder(root, size, mode)
        dataset.num_classes = len(dataset.classes)
    else:
        dataset = FKDFolder(root, a.label_dir, a.num_crops, size, mode)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=a.batch_size // a.num_crops, shuffle=True, num_workers=a.workers,
        persistent_workers=a.workers > 0, collate_fn=concat_collate)
    passes = max(1, math.ceil(a.epochs / a.num_crops))
    total_steps = passes * len(loader)
    if a.max_batches:
        total_steps = min(total_steps, a.max_batches)

    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    if not a.pipeline_only:
        model = fkd_models.make_model(a.model, channels, dataset.num_classes)
        model = model.to(memory_format=fmt)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)

    step = 0
    samples = 0
    t0 = None
    touched = 0.0
    for p in range(passes):
        loss_sum, loss_n = 0.0, 0
        for x, q in loader:
            if a.pipeline_only:
                touched += float(x[0, 0, 0, 0]) + float(q[0, 0])
            else:
                for g in opt.param_groups:
                    g["lr"] = 0.5 * a.lr * (1.0 + math.cos(math.pi * step / total_steps))
                x = x.contiguous(memory_format=fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.amp == "bf16"):
                    logits = model(x)
                logits = logits.float()  # the loss in float32, as fkd computes it
                if a.plain:
                    loss = torch.nn.functional.cross_entropy(logits, q)
                else:
                    loss = -(q * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item()
                loss_n += 1
            step += 1
            if t0 is not None:
                samples += x.shape[0]
            elif step == WARMUP_STEPS:
                t0 = time.perf_counter()
            if step >= total_steps:
                break
        if not a.pipeline_only and loss_n:
            print("pass %d (epochs %d-%d): loss %.4f over %d steps"
                  % (p + 1, p * a.num_crops + 1, (p + 1) * a.num_crops, loss_sum / loss_n,
                     loss_n), file=sys.stderr, flush=True)
        if step >= total_steps:
            break
    if t0 is None or samples == 0:
        sys.exit("too few steps to time: %d, warm-up takes %d" % (step, WARMUP_STEPS))
    secs = time.perf_counter() - t0
    result = {"mode": "pipeline" if a.pipeline_only else "train",
              "samples_per_s": samples / secs, "samples": samples, "seconds": secs,
              "workers": a.workers, "threads": a.threads, "num_crops": a.num_crops}
    if a.json:
        print(json.dumps(result))
    else:
        print("%s: %.1f samples/s (%d crops in %.2f s; workers %d, threads %d, num_crops %d)"
              % (result["mode"], result["samples_per_s"], samples, secs, a.workers, a.threads,
                 a.num_crops))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    ml = sub.add_parser("make-labels", help="write reference-layout label files")
    ml.add_argument("data_root")
    ml.add_argument("label_dir")
    ml.add_argument("--crops", type=int, required=True, help="crops stored per image")
    ml.add_argument("--classes", type=int, default=0, help="default: the class folders' count")
    ml.add_argument("--k", type=int, default=5, help="top-k of marginal smoothing")
    ml.add_argument("--scale", type=float, nargs=2, default=[0.35, 1.0],
                    help="RandomResizedCrop area range")
    ml.add_argument("--fp16", action="store_true", help="float16 coords and output")
    ml.add_argument("--seed", type=int, default=0)
    ml.add_argument("--signal", type=float, default=3.0,
                    help="added to the image's own class logit (0 = labels are pure noise)")

    tr = sub.add_parser("train", help="time the reference student pipeline or training")
    tr.add_argument("data_root")
    tr.add_argument("label_dir")
    tr.add_argument("--model", default="tiny")
    tr.add_argument("--num-crops", type=int, default=4)
    tr.add_argument("--batch-size", type=int, default=128, help="crops per step")
    tr.add_argument("--epochs", type=int, default=1, help="FKD epochs (a pass is num-crops)")
    tr.add_argument("--workers", type=int, default=2)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--lr", type=float, default=0.1)
    tr.add_argument("--input-size", type=int, default=0, help="default: the images' height")
    tr.add_argument("--channels-last", action="store_true")
    tr.add_argument("--pipeline-only", action="store_true", help="load batches, train nothing")
    tr.add_argument("--max-batches", type=int, default=0, help="stop after B steps (0 = all)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--json", action="store_true")
    tr.add_argument("--plain", action="store_true",
                    help="plain supervised training instead (RandomResizedCrop + flip, hard "
                         "labels; LABEL_DIR is not read)")
    tr.add_argument("--amp", choices=["off", "bf16"], default="off",
                    help="bf16: torch.autocast('cpu', bfloat16) around the forward pass")

    a = ap.parse_args()
    if a.command == "make-labels":
        make_labels(a)
    else:
        train(a)


if __name__ == "__main__":
    main()
