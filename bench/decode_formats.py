"""Decode speed of each image format torchvision's ImageFolder lists: PIL's side, and the
files fkd's side reads.

usage: decode_formats.py make SRC_DIR OUT_DIR     converts SRC_DIR/*.jpg into one ImageFolder
                                                per format: OUT_DIR/<fmt>/train/x/*.<ext>
       decode_formats.py pil FOLDER [--rounds R] Image.open + convert("RGB") of every file of
                                                FOLDER/train/x, one thread; prints img/s
                                                (the best of R passes)
"""
import os
import sys
import time

from PIL import Image

FORMATS = {  # name: (extension, PIL save arguments)
    "png": (".png", {}),
    "webp-lossy": (".webp", {"quality": 90}),
    "webp-lossless": (".webp", {"lossless": True}),
    "tiff": (".tif", {}),
    "tiff-lzw": (".tif", {"compression": "tiff_lzw"}),
    "bmp": (".bmp", {}),
    "ppm": (".ppm", {}),
}


def make(src, out):
    files = sorted(f for f in os.listdir(src) if f.endswith(".jpg"))
    for name, (ext, kw) in FORMATS.items():
        for split in ("train", "val"):
            d = os.path.join(out, name, split, "x")
            os.makedirs(d, exist_ok=True)
            for f in files if split == "train" else files[:1]:
                target = os.path.join(d, os.path.splitext(f)[0] + ext)
                if not os.path.exists(target):
                    Image.open(os.path.join(src, f)).convert("RGB").save(target, **kw)


def pil(folder, rounds):
    d = os.path.join(folder, "train", "x")
    paths = [os.path.join(d, f) for f in sorted(os.listdir(d))]
    best = 1e30
    for _ in range(rounds):
        t0 = time.perf_counter()
        for p in paths:
            with Image.open(p) as im:
                im.convert("RGB").load()
        best = min(best, time.perf_counter() - t0)
    print(f"{len(paths) / best:.1f}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
        pil(sys.argv[2], rounds)
