"""Soft-label files of the reference FKD implementation, made and read as it does.

  reference_labels.py samples OUT_DIR
      torch.save files for reader unit tests: OUT_DIR/<name>.tar plus OUT_DIR/<name>.json
      holding what each element is (kind, dtype, shape, values as float).
  reference_labels.py dataset DATA N_PER_CLASS CLASSES
      a small ImageFolder (train/ and val/) of PNG and JPEG images of varied sizes.
  reference_labels.py generate DATA LABELS TYPE CROPS CLASSES [--fp16] [--torch-labels]
                               [--expected JSON]
      LABELS/<class>/<stem>.tar for every DATA/train/<class>/<stem>.<ext>, as the reference's
      generate_soft_label.py writes them (RandomResizedCrop coords normalized by the image
      size, flips, label_quantization of a teacher-like softmax), and, with --expected, a JSON of what a
      faithful import must hold: each image's crops as PIL crops them (left, top, width,
      height, flip) and its labels.
  reference_labels.py load DIR JSON
      torch.load of every DIR/**/*.tar: a JSON {relpath: {coords, flips, labels: {kind, dtype,
      shape, values}}} for the C++ test to compare with the store it exported.
  reference_labels.py boxes JSON
      normalized crops (float32 and float16, ties and near-ties included) on images of many
      sizes, each with the pixel box the reference's replay cuts: torchvision's crop at
      (i*H, j*W, h*H, w*W) on a PIL image whose pixels hold their own coordinates.
  reference_labels.py train_batch LABELS DATA TYPE CLASSES
      the reference's own training-side reading (ImageFolder_FKD.__getitem__'s torch.load and
      indexing, default_collate, Recover_soft_label) over LABELS: prints the recovered
      batch's shape and its row sums.
"""
import json
import os
import random
import sys

import numpy as np
import torch
import torchvision
from PIL import Image


def describe(x):
    if isinstance(x, torch.Tensor):
        kind, arr = "tensor", x.detach().cpu().numpy()
    else:
        kind, arr = "numpy", np.asarray(x)
    return {"kind": kind, "dtype": str(arr.dtype), "shape": list(arr.shape),
            "values": [float(v) for v in arr.astype(np.float64).reshape(-1)]}


class ShortArray:
    """Pickles as a float32 numpy array of shape (7, 4) that holds 100 bytes, not 112."""

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (7, 4), np.dtype(np.float32), False, b"\0" * 100))


def samples(out):
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def save(name, state):
        torch.save(state, os.path.join(out, name + ".tar"))
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump([describe(x) for x in state], f)

    n = 7
    # As the reference: coords and flips are views of a stacked, permuted batch (not contiguous).
    coords = torch.rand(n, 3, 4, generator=g).permute(1, 0, 2)[1].numpy()
    flips = (torch.rand(n, 3, generator=g) > 0.5).permute(1, 0)[2].numpy()
    probs = torch.softmax(torch.randn(n, 10, generator=g) * 3, dim=1)
    order = torch.argsort(probs, dim=1, descending=True)[:, :5]
    topk = torch.stack([order.float(), torch.gather(probs, 1, order)], dim=1)  # [n, 2, 5]
    save("marginal_fp32_numpy", [coords, flips, topk.numpy()])
    save("marginal_fp16_numpy", [np.float16(coords), flips, np.float16(topk.numpy())])
    save("marginal_fp32_tensor", [coords, flips, topk])
    save("marginal_fp16_tensor", [np.float16(coords), flips, topk.half()])
    save("hard_numpy", [coords, flips, torch.argmax(probs, dim=1).numpy()])
    save("hard_tensor", [coords, flips, torch.argmax(probs, dim=1)])
    save("smoothing", [coords, flips, torch.stack([order[:, 0].float(), probs.max(1).values], 1).numpy()])
    save("full_tensor", [coords, flips, probs])
    save("full_fp64_numpy", [coords.astype(np.float64), flips, probs.double().numpy()])
    # A non-contiguous tensor (a transposed view) and a Fortran-ordered numpy array.
    save("strided", [np.asfortranarray(coords), torch.from_numpy(flips), topk.permute(0, 2, 1).contiguous().permute(0, 2, 1)])
    save("transposed_tensor", [coords, flips, probs.t()])
    save("tuple", (coords, flips, topk.numpy()))
    save("empty", [np.zeros((0, 4), np.float32), np.zeros((0,), bool), np.zeros((0, 2, 5), np.float32)])
    torch.save([ShortArray(), flips, topk.numpy()], os.path.join(out, "short_array.tar"))
    torch.save([coords, flips], os.path.join(out, "two_elements.tar"))
    torch.save({"coords": coords}, os.path.join(out, "dict.tar"))
    torch.save([coords, flips, topk.numpy()], os.path.join(out, "legacy.tar"),
               _use_new_zipfile_serialization=False)


def dataset(root, per_class, classes):
    rng = random.Random(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = os.path.join(root, split, "class%02d" % c)
            os.makedirs(d, exist_ok=True)
            for k in range(n):
                w, h = rng.randint(20, 90), rng.randint(20, 90)
                arr = np.array([[[(x * 7 + y * 3 + c * 40 + k) % 256, (x * y) % 256, (y * 5 + k) % 256]
                                 for x in range(w)] for y in range(h)], np.uint8)
                ext = "png" if k % 2 == 0 else "jpg"
                # A dotted name: the reference names its label file by the part before the first dot.
                name = "img%02d.v1.%s" % (k, ext) if k == 1 else "img%02d.%s" % (k, ext)
                Image.fromarray(arr).save(os.path.join(d, name))


def label_quantization(p, label_type, k):
    # generate_soft_label.py's label_quantization, one crop at a time as it does.
    out = []
    for row in p:
        if label_type == "hard":
            out.append(torch.argmax(row))
        elif label_type == "smoothing":
            i = torch.argmax(row)
            out.append(torch.stack([i, row[i]], dim=0))
        else:
            order = torch.argsort(row, descending=True)
            out.append(torch.stack([order[:k], row[order[:k]]], dim=0))
    return torch.stack(out, dim=0).detach().numpy()


def pil_box(c, H, W):
    # torchvision resized_crop(img, i, j, h, w) on a PIL image: img.crop((j, i, j + w, i + h)),
    # PIL rounding each corner with round() (half to even).
    i, j, h, w = (c[0].item() * H, c[1].item() * W, c[2].item() * H, c[3].item() * W)
    left, top, right, bottom = round(j), round(i), round(j + w), round(i + h)
    return [left, top, right - left, bottom - top]


def generate(data, labels, label_type, crops, classes, fp16, torch_labels, expected_path):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    folder = torchvision.datasets.ImageFolder(os.path.join(data, "train"))
    rrc = torchvision.transforms.RandomResizedCrop(16)
    expected = {}
    for path, target in folder.samples:
        img = Image.open(path)
        W, H = img.size
        rows = []
        for _ in range(crops):
            i, j, h, w = rrc.get_params(img, rrc.scale, rrc.ratio)
            rows.append(torch.FloatTensor((i / H, j / W, h / H, w / W)))
        # [crops, batch, 4] permuted to [batch, crops, 4], then one image's view, as the reference
        coords = torch.stack([torch.stack(rows), torch.stack(rows)], dim=1).permute(1, 0, 2)[0]
        flips = torch.rand(crops, generator=g) < 0.5
        # Teacher-like (bench/bench_core_store.cpp's model): the image's own prior over the
        # classes, the same for all its crops, and its class more or less sure per crop.
        prior = 1.5 * torch.randn(1, classes, generator=g)
        logits = prior + 0.5 * torch.randn(crops, classes, generator=g)
        logits[:, target] += np.log(classes) + 2 + 2 * torch.randn(crops, generator=g)
        probs = torch.softmax(logits, dim=1)
        if label_type == "full":
            lab = probs if torch_labels else probs.numpy()
            if fp16:
                lab = probs.half() if torch_labels else np.float16(probs.numpy())
        else:
            q = label_quantization(probs, label_type, 5)
            lab = torch.from_numpy(q) if torch_labels else q
            if fp16:
                lab = lab.half() if torch_labels else np.float16(q)
        c_np = coords.numpy()
        f_np = flips.numpy()
        state = [np.float16(c_np) if fp16 else c_np, f_np, lab]
        rel = os.path.relpath(path, os.path.join(data, "train"))
        cls, fname = os.path.split(rel)
        out_dir = os.path.join(labels, cls)
        os.makedirs(out_dir, exist_ok=True)
        torch.save(state, os.path.join(out_dir, fname.split(".")[0] + ".tar"))
        stored = torch.from_numpy(np.asarray(state[0]))
        expected["train/" + rel] = {
            "size": [H, W],
            "boxes": [pil_box(stored[n], H, W) + [bool(f_np[n])] for n in range(crops)],
            "labels": describe(lab)["values"],
        }
    if expected_path:
        with open(expected_path, "w") as f:
            json.dump(expected, f)


def load(directory, out):
    result = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            if not name.endswith(".tar"):
                continue
            path = os.path.join(root, name)
            state = torch.load(path, map_location="cpu")
            assert isinstance(state, list) and len(state) == 3, path
            result[os.path.relpath(path, directory)] = {
                k: describe(v) for k, v in zip(("coords", "flips", "labels"), state)}
    with open(out, "w") as f:
        json.dump(result, f)


def boxes(out):
    import torchvision.transforms.functional as F
    rng = np.random.default_rng(3)
    cases = []
    for n in range(1500):
        H, W = int(rng.integers(1, 1500)), int(rng.integers(1, 1500))
        kind = n % 3
        if kind == 0:  # arbitrary
            i, j = rng.uniform(0, 0.5, 2)
            h, w = rng.uniform(0.01, 0.5, 2)
        else:  # pixel boxes over the size, and half-pixel ties
            top, left = rng.integers(0, max(1, H // 2)), rng.integers(0, max(1, W // 2))
            hh, ww = rng.integers(1, H - top + 1), rng.integers(1, W - left + 1)
            half = 0.5 if kind == 2 else 0.0
            i, j, h, w = (top + half) / H, (left + half) / W, hh / H, ww / W
        dtype = np.float16 if n % 2 else np.float32
        c = torch.from_numpy(np.array([i, j, h, w], dtype))
        # The pixel (x, y) holds y * 2048 + x; the crop's size and first pixel say its box.
        img = Image.fromarray((np.arange(H)[:, None] * 2048 + np.arange(W)[None, :]).astype(np.int32), "I")
        crop = F.crop(img, c[0].item() * H, c[1].item() * W, c[2].item() * H, c[3].item() * W)
        cw, ch = crop.size
        if cw == 0 or ch == 0:
            continue
        first = crop.getpixel((0, 0))
        left, top = first % 2048, first // 2048
        if top >= H or left >= W or top + ch > H or left + cw > W:
            continue  # outside the image: not a reference crop
        cases.append({"size": [H, W], "coords": [float(v) for v in c.tolist()],
                      "box": [int(left), int(top), int(cw), int(ch)]})
    with open(out, "w") as f:
        json.dump(cases, f)


def train_batch(labels, data, label_type, classes):
    # utils_FKD.py: ImageFolder_FKD.__getitem__ reads the file and indexes the labels with a
    # torch index; train_FKD.py concatenates, then Recover_soft_label.
    folder = torchvision.datasets.ImageFolder(os.path.join(data, "train"))
    soft = []
    for path, _ in folder.samples[:4]:
        label_path = os.path.join(labels, "/".join(path.split("/")[-2:]).split(".")[0] + ".tar")
        coords, flips, output = torch.load(label_path, map_location=torch.device("cpu"))
        rand_index = torch.randperm(len(output))
        for i in range(2):
            soft.append(output[rand_index[i]])
            _ = coords[rand_index[i]], flips[rand_index[i]]
    batch = torch.utils.data.default_collate(soft)
    n = classes
    if label_type == "hard":
        rec = torch.zeros(batch.size(0), n).scatter_(1, batch.view(-1, 1), 1)
    elif label_type == "marginal_smoothing":
        index = batch[:, 0, :].to(dtype=int)
        value = batch[:, 1, :]
        minor = (torch.ones(batch.size(0), 1) - torch.sum(value, dim=1, keepdim=True)) / (n - 5)
        minor = minor.reshape(-1, 1).repeat_interleave(n, dim=1)
        rec = (minor * torch.ones(index.size(0), n)).scatter_(1, index, value)
    else:
        rec = batch
    print(list(rec.shape), " ".join("%.4f" % float(s) for s in rec.sum(1)))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "samples":
        samples(sys.argv[2])
    elif cmd == "dataset":
        dataset(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "generate":
        args = sys.argv[2:]
        expected = None
        if "--expected" in args:
            expected = args[args.index("--expected") + 1]
        generate(args[0], args[1], args[2], int(args[3]), int(args[4]), "--fp16" in args,
                 "--torch-labels" in args, expected)
    elif cmd == "load":
        load(sys.argv[2], sys.argv[3])
    elif cmd == "boxes":
        boxes(sys.argv[2])
    elif cmd == "train_batch":
        train_batch(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("unknown command " + cmd)
