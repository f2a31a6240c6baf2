#!/usr/bin/env bash
# Decoding each ImageFolder format (the 200 generated 500x375 images of run_loader.sh, saved
# as PNG, WebP, TIFF, BMP and PPM): fkd's decode (bench_core_loader's decode pass, one
# thread) beside PIL's Image.open + convert("RGB") (bench/decode_formats.py, one thread).
#
# usage: bench/run_formats.sh [BUILD_DIR] [--rounds R]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
rounds=3
[ "${1:-}" = --rounds ] && rounds=$2
bin=$build/bench/bench_core_loader
python=/usr/bin/python3
out=$root/bench/out
[ -x "$bin" ] || { echo "no $bin: build the bench_core_loader target first" >&2; exit 1; }
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$out"
"$python" "$root/bench/decode_formats.py" make "$out/500x375" "$out/formats"
echo "| format | fkd img/s | PIL img/s | fkd / PIL |"
echo "|---|---:|---:|---:|"
for f in png webp-lossy webp-lossless tiff tiff-lzw bmp ppm; do
  folder=$out/formats/$f
  fkd=$("$bin" "$folder" --rounds "$rounds" --decode-only | awk '$1 == "decode" { print $3 }')
  pil=$("$python" "$root/bench/decode_formats.py" pil "$folder" --rounds "$rounds")
  echo "| $f | $fkd | $pil | $(awk -v a="$fkd" -v b="$pil" 'BEGIN { printf "%.2fx", a / b }') |"
done
