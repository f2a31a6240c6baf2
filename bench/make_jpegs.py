"""Writes deterministic synthetic JPEGs for the pipeline benchmark.

usage: make_jpegs.py OUTDIR [--count N] [--seed S] [--sizes 500x375,224x224]

For each size WxH, OUTDIR/WxH/ receives N files img_0000.jpg ... saved by PIL at quality 90
(4:2:0, like most photos). Each image layers a colour gradient, smooth random noise, random
shapes and fine grain, so the files cost about what photos of that size cost to decode.
Same seed, same bytes.
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_image(rng, w, h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx / w * rng.uniform(0.2, 1) + yy / h * rng.uniform(0.2, 1))[..., None] / 2
    img = c0 * (1 - t) + c1 * t
    small = rng.uniform(-60, 60, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    noise = np.stack(
        [np.asarray(Image.fromarray(small[..., c], "F").resize((w, h), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    base = Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(5, 25))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 6)))
    base = base.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    grain = rng.normal(0, rng.uniform(4, 12), (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(base) + grain, 0, 255).astype(np.uint8))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="500x375,224x224")
    args = ap.parse_args()
    for spec in args.sizes.split(","):
        w, h = (int(v) for v in spec.split("x"))
        rng = np.random.default_rng([args.seed, w, h])
        d = os.path.join(args.outdir, spec)
        os.makedirs(d, exist_ok=True)
        for i in range(args.count):
            make_image(rng, w, h).save(os.path.join(d, f"img_{i:04d}.jpg"), quality=90)


if __name__ == "__main__":
    main()
