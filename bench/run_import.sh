#!/usr/bin/env bash
# `fkd label import --format reference`: import rate and the store's size against the
# reference's files, on synthetic 500x375 JPEGs with reference files made as its
# generate_soft_label.py makes them (RandomResizedCrop coords, flips, marginal top-5 labels
# of 1,000 classes, float16 with --use_fp16) by tests/py/reference_labels.py.
# Builds nothing: build fkd first (cmake --build build).
#
# usage: bench/run_import.sh [BUILD_DIR] [--images 2000] [--crops 40] [--classes 1000]
#                            [--threads "1 2"]
#   Writes into bench/out/import/. Prints one Markdown table: per thread count the command's
#   wall time (process start, LibTorch's loading included) and the import's own time as it
#   reports it, images/s of each (files page-cached: they were just written), then the bytes
#   of the source files and of the store (shard files; manifest excluded) per crop.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$1; shift; fi
images=2000 crops=40 classes=1000 threads="1 2"
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --crops) crops=$2; shift 2 ;;
    --classes) classes=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
python=/usr/bin/python3
fkd=$build/fkd
out=$root/bench/out/import
jpegs=$out/jpegs-$images
data=$out/data-$images-$classes
labels=$out/labels-$images-$crops-$classes
mkdir -p "$out"

# Images: image n goes to class n % classes (hard links to the generated JPEGs: fkd names a
# symbolic link by its target).
if [ ! -d "$jpegs/500x375" ]; then
  $python "$root/bench/make_jpegs.py" "$jpegs" --count "$images" --sizes 500x375
fi
if [ ! -d "$data/train" ]; then
  for ((n = 0; n < images; n++)); do
    c=$(printf 'c%04d' $((n % classes)))
    mkdir -p "$data/train/$c"
    ln -f "$jpegs/500x375/$(printf 'img_%04d.jpg' "$n")" "$data/train/$c/"
  done
fi
if [ ! -d "$labels" ]; then
  $python "$root/tests/py/reference_labels.py" generate "$data" "$labels" marginal "$crops" \
    "$classes" --fp16
fi

src_bytes=$(find "$labels" -name '*.tar' -printf '%s\n' | awk '{s += $1} END {print s}')
total_crops=$((images * crops))
echo "| threads | wall s | images/s | import s | images/s | source bytes | store bytes | source B/crop | store B/crop |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in $threads; do
  store=$out/store-$images-$crops-$classes-t$t
  rm -rf "$store"
  start=$(date +%s.%N)
  FKD_PROGRESS=off "$fkd" label import --format reference "$labels" --data "$data" \
    --out "$store" --threads "$t" > "$out/import-t$t.log"
  end=$(date +%s.%N)
  own=$(sed -n 's/.* in \([0-9.]*\) s,.*/\1/p' "$out/import-t$t.log")
  store_bytes=$(find "$store" -name '*.fkdl' -printf '%s\n' | awk '{s += $1} END {print s}')
  awk -v t="$t" -v s="$start" -v e="$end" -v o="$own" -v n="$images" -v sb="$src_bytes" -v fb="$store_bytes" \
    -v c="$total_crops" 'BEGIN {
      w = e - s
      printf "| %d | %.2f | %.0f | %.2f | %.0f | %d | %d | %.1f | %.2f |\n", t, w, n / w, o, n / o, sb, fb,
        sb / c, fb / c
    }'
done
