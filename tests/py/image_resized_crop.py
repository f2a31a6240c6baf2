"""Oracle for fkd's resized_crop / resize_shorter / center_box: torchvision 0.14 on PIL images.

usage: image_resized_crop.py OUTDIR

Writes source images as raw HWC bytes and, for a table of crops, what torchvision makes of
them, plus OUTDIR/manifest.txt with one line per item:
  src NAME H W C FILE
  crop SRC TOP LEFT H W OUT_H OUT_W INTERP FLIP FILE   F.resized_crop (+ F.hflip when FLIP)
  center SRC SIZE OUT_H OUT_W INTERP FILE              Resize(SIZE) then CenterCrop
"""
import os
import sys

import numpy as np
from PIL import Image
import torchvision.transforms as T
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def make_source(rng, h, w, c):
    """Smooth noise with hard edges and saturated patches: exercises rounding and clipping
    (bicubic overshoots at 0/255 edges)."""
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, c), dtype=np.uint8)
    img = np.asarray(
        Image.fromarray(small.squeeze(-1) if c == 1 else small).resize((w, h), Image.BICUBIC)
    ).reshape(h, w, c).astype(np.int32)
    img += rng.integers(-20, 21, (h, w, c))
    img[h // 3 : h // 2, :, :] = 255
    img[:, w // 4 : w // 4 + 3, :] = 0
    img[2 * h // 3 :, 2 * w // 3 :, 0] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def to_pil(a):
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(1234)
    sources = {
        "rgb": make_source(rng, 97, 131, 3),
        "gray": make_source(rng, 64, 50, 1),
        "photo": make_source(rng, 375, 500, 3),
        "tall": make_source(rng, 300, 41, 3),
    }
    lines = []
    for name, a in sources.items():
        path = f"src_{name}.bin"
        a.tofile(os.path.join(out, path))
        lines.append(f"src {name} {a.shape[0]} {a.shape[1]} {a.shape[2]} {path}")

    cases = [
        # (src, top, left, h, w, out_h, out_w)
        ("rgb", 0, 0, 97, 131, 224, 224),  # upscale, whole image
        ("rgb", 10, 20, 50, 60, 20, 30),  # downscale
        ("rgb", -10, -15, 60, 70, 33, 47),  # partly outside, top-left
        ("rgb", 60, 100, 60, 70, 41, 29),  # partly outside, bottom-right
        ("rgb", -20, -20, 140, 170, 64, 64),  # covers the whole image and more
        ("rgb", 5, 7, 40, 40, 40, 40),  # same size: a copy
        ("rgb", 5, 7, 40, 50, 40, 31),  # same height: horizontal pass only
        ("rgb", 5, 7, 50, 40, 23, 40),  # same width: vertical pass only
        ("rgb", 90, 120, 30, 30, 16, 16),  # mostly outside
        ("rgb", 200, 300, 10, 10, 8, 8),  # entirely outside: black
        ("rgb", 3, 4, 1, 1, 5, 7),  # one pixel
        ("gray", 0, 0, 64, 50, 224, 224),
        ("gray", 7, 3, 30, 45, 17, 13),
        ("gray", -5, 10, 70, 30, 64, 16),
        ("photo", 0, 0, 375, 500, 224, 224),
        ("photo", 37, 61, 301, 222, 224, 224),
        ("photo", 0, 0, 375, 500, 20, 13),  # strong downscale: wide filters
        ("tall", 0, 0, 300, 41, 224, 224),
        ("tall", 10, -3, 280, 45, 32, 7),
    ]
    for _ in range(40):
        name = rng.choice(list(sources))
        H, W = sources[name].shape[:2]
        h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        top, left = int(rng.integers(-h // 4, H - h + h // 4 + 1)), int(rng.integers(-w // 4, W - w + w // 4 + 1))
        oh, ow = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        cases.append((name, top, left, h, w, oh, ow))

    for k, (name, top, left, h, w, oh, ow) in enumerate(cases):
        img = to_pil(sources[name])
        for interp in ("bilinear", "bicubic"):
            flip = (k + len(interp)) % 2
            res = F.resized_crop(img, top, left, h, w, [oh, ow], MODES[interp])
            if flip:
                res = F.hflip(res)
            path = f"crop_{k}_{interp}.bin"
            np.asarray(res, dtype=np.uint8).tofile(os.path.join(out, path))
            lines.append(f"crop {name} {top} {left} {h} {w} {oh} {ow} {interp} {flip} {path}")

    centers = [
        ("photo", 256, 224, 224, "bilinear"),
        ("photo", 232, 224, 224, "bicubic"),
        ("rgb", 50, 37, 45, "bilinear"),
        ("rgb", 97, 80, 80, "bilinear"),  # the shorter side already has the size: no resize
        ("tall", 64, 77, 67, "bicubic"),  # crop wider than the image: torchvision pads
        ("gray", 40, 45, 47, "bilinear"),
    ]
    for k, (name, size, oh, ow, interp) in enumerate(centers):
        tf = T.Compose([T.Resize(size, MODES[interp]), T.CenterCrop((oh, ow))])
        path = f"center_{k}.bin"
        np.asarray(tf(to_pil(sources[name])), dtype=np.uint8).tofile(os.path.join(out, path))
        lines.append(f"center {name} {size} {oh} {ow} {interp} {path}")

    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
