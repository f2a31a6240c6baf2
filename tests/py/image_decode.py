"""Oracle for fkd's decode_image: writes image files of every format torchvision's ImageFolder
lists (JPEG, PNG, WebP, TIFF, BMP, PPM/PGM) and PIL's decode of each.

usage: image_decode.py OUTDIR

OUTDIR/manifest.txt has one line per (file, wanted channels):
  NAME WANT H W C RAWFILE
where RAWFILE holds PIL's pixels (HWC uint8) after torchvision's loader conversion:
WANT 3 is convert("RGB"), WANT 1 convert("L"), WANT 0 whichever of the two keeps the file's
own kind (grey stays grey). 16-bit grey is the one exception: PIL opens it as 32-bit "I" and
convert() clips it to 255, where fkd keeps the high byte, so the oracle is the high byte.
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image


def smooth(rng, h, w, c):
    small = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, c), dtype=np.uint8)
    big = Image.fromarray(small[:, :, 0] if c == 1 else small).resize((w, h), Image.BICUBIC)
    a = np.asarray(big).reshape(h, w, c).astype(np.int32) + rng.integers(-12, 13, (h, w, c))
    return np.clip(a, 0, 255).astype(np.uint8)


def png_bytes(samples, color_type, bit_depth):
    """A minimal PNG writer, for sample formats PIL cannot save (16-bit RGB, 16-bit and 4-bit
    grey). `samples` is (H, W*channels) of ints already in the file's bit depth."""
    h = samples.shape[0]
    if bit_depth == 16:
        rows = samples.astype(">u2").tobytes()
        stride = samples.shape[1] * 2
    else:
        per_byte = 8 // bit_depth
        padded = np.zeros((h, -(-samples.shape[1] // per_byte) * per_byte), np.uint8)
        padded[:, : samples.shape[1]] = samples
        packed = np.zeros((h, padded.shape[1] // per_byte), np.uint8)
        for k in range(per_byte):
            packed |= (padded[:, k::per_byte] << (8 - bit_depth * (k + 1))).astype(np.uint8)
        rows, stride = packed.tobytes(), packed.shape[1]
    raw = b"".join(b"\0" + rows[y * stride : (y + 1) * stride] for y in range(h))
    channels = {0: 1, 2: 3}[color_type]
    width = samples.shape[1] // channels

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def top_down_bmp(data):
    """The same 24-bit BMP stored top row first (negative height), which PIL does not write."""
    off = struct.unpack_from("<I", data, 10)[0]
    w, h = struct.unpack_from("<ii", data, 18)
    stride = (w * 3 + 3) // 4 * 4
    rows = [data[off + i * stride : off + (i + 1) * stride] for i in range(h)]
    head = bytearray(data[:off])
    struct.pack_into("<i", head, 22, -h)
    return bytes(head) + b"".join(reversed(rows))


def pil_save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    rgb = smooth(rng, 61, 83, 3)
    gray = smooth(rng, 45, 38, 1)[:, :, 0]
    rgba = np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)])
    rgb16 = rgb.astype(np.uint16) * 256 + rng.integers(0, 256, rgb.shape)
    gray16 = gray.astype(np.uint16) * 256 + rng.integers(0, 256, gray.shape)
    gray4 = gray >> 4
    big = smooth(rng, 237, 190, 3)
    pal = Image.fromarray(rgb).quantize(40)

    files = {
        "rgb_q90.jpg": pil_save(Image.fromarray(rgb), "JPEG", quality=90),
        "rgb_444.jpg": pil_save(Image.fromarray(rgb), "JPEG", quality=95, subsampling=0),
        "rgb_422.jpg": pil_save(Image.fromarray(rgb), "JPEG", quality=90, subsampling=1),
        "rgb_progressive.jpg": pil_save(Image.fromarray(rgb), "JPEG", quality=80, progressive=True),
        "big_420.jpg": pil_save(Image.fromarray(big), "JPEG", quality=90),
        "big_progressive.jpg": pil_save(Image.fromarray(big), "JPEG", quality=90, progressive=True),
        "gray.jpg": pil_save(Image.fromarray(gray), "JPEG", quality=90),
        "cmyk.jpg": pil_save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
        "gray.png": pil_save(Image.fromarray(gray), "PNG"),
        "rgb.png": pil_save(Image.fromarray(rgb), "PNG"),
        "rgba.png": pil_save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la.png": pil_save(Image.fromarray(rgba[:, :, 2:4].copy(), "LA"), "PNG"),
        "palette.png": pil_save(pal, "PNG"),
        "palette_trns.png": pil_save(pal, "PNG", transparency=3),
        "bilevel.png": pil_save(Image.fromarray(gray > 128), "PNG"),
        "gray4.png": png_bytes(gray4, 0, 4),
        "gray16.png": png_bytes(gray16, 0, 16),
        "rgb16.png": png_bytes(rgb16.reshape(rgb.shape[0], -1), 2, 16),
        "rgb_lossy.webp": pil_save(Image.fromarray(rgb), "WEBP", quality=80),
        "rgb_lossless.webp": pil_save(Image.fromarray(rgb), "WEBP", lossless=True),
        "rgba.webp": pil_save(Image.fromarray(rgba, "RGBA"), "WEBP", quality=90),
        "gray.webp": pil_save(Image.fromarray(gray), "WEBP", quality=90),
        "rgb.tif": pil_save(Image.fromarray(rgb), "TIFF"),
        "rgb_lzw.tif": pil_save(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"),
        "rgb_deflate.tiff": pil_save(Image.fromarray(rgb), "TIFF", compression="tiff_adobe_deflate"),
        "gray.tif": pil_save(Image.fromarray(gray), "TIFF"),
        "rgba.tif": pil_save(Image.fromarray(rgba, "RGBA"), "TIFF"),
        "palette.tif": pil_save(pal, "TIFF"),
        "bilevel.tif": pil_save(Image.fromarray(gray > 128), "TIFF"),
        "rgb.bmp": pil_save(Image.fromarray(rgb), "BMP"),
        "rgb_topdown.bmp": top_down_bmp(pil_save(Image.fromarray(rgb), "BMP")),
        "gray.bmp": pil_save(Image.fromarray(gray), "BMP"),
        "palette.bmp": pil_save(pal, "BMP"),
        "bilevel.bmp": pil_save(Image.fromarray(gray > 128), "BMP"),
        "rgba.bmp": pil_save(Image.fromarray(rgba, "RGBA"), "BMP"),
        "rgb.ppm": pil_save(Image.fromarray(rgb), "PPM"),
        "gray.pgm": pil_save(Image.fromarray(gray), "PPM"),
        "bilevel.pbm": pil_save(Image.fromarray(gray > 128), "PPM"),
        "plain.pbm": b"P1\n# plain bitmap\n5 2\n10101\n0 1 1 0 0\n",
        "plain.pgm": b"P2 3 2 15\n0 7 15\n# comment\n3 8 11\n",
        "plain.ppm": b"P3\n2 2\n255\n1 2 3 4 5 6\n250 251 252 0 0 0\n",
        "maxval1000.ppm": b"P6 4 3 1000\n" + (rgb[:3, :4].astype(np.uint16) * 3).astype(">u2").tobytes(),
        "maxval100.pgm": b"P5 5 4 100\n" + (gray[:4, :5] * 100 // 255).astype(np.uint8).tobytes(),
    }
    lines = []
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        img = Image.open(os.path.join(out, name))
        img.load()
        grey_kind = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B")
        for want in (0, 1, 3):
            if img.mode.startswith("I"):
                px = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
                if want == 3:
                    px = np.dstack([px] * 3)
            else:
                mode = {0: "L" if grey_kind else "RGB", 1: "L", 3: "RGB"}[want]
                px = np.asarray(img.convert(mode), dtype=np.uint8)
            px = px.reshape(px.shape[0], px.shape[1], -1)
            raw = f"{name}.{want}.raw"
            px.tofile(os.path.join(out, raw))
            lines.append(f"{name} {want} {px.shape[0]} {px.shape[1]} {px.shape[2]} {raw}")
    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
