#!/usr/bin/env bash
# How the fkd loader's crops/s scale with worker threads: the loader table of run_loader.sh
# (random crops and stored crops replayed from a label store, m = 1, 2, 4) for each worker
# count, on a machine with that many cores (a 16-core GPU host, say).
#
# usage: bench/run_loader_workers.sh [BUILD_DIR] [--workers "1 2 4 8 16"] [--rounds R]
#          [--copies K] [--batch-images B]
# The 200 generated JPEGs of each size (bench/make_jpegs.py) are linked K times (default 10)
# into one ImageFolder, so that an epoch holds enough batches for every worker; decoding
# cost is the same as with K x 200 distinct files once they are in the page cache. Decode
# alone runs on one thread (the per-core floor). Prints a Markdown table and the malloc
# configuration; the machine's load average before and after.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
workers="1 2 4 8 16" rounds=3 copies=10 batch_images=16
while [ $# -gt 0 ]; do
  case $1 in
    --workers) workers=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --copies) copies=$2; shift 2 ;;
    --batch-images) batch_images=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bin=$build/bench/bench_core_loader
out=$root/bench/out
[ -x "$bin" ] || { echo "no $bin: build the bench_core_loader target first" >&2; exit 1; }
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$out"
echo "$(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| source | crops/image | workers | decode only img/s (1 thread) | fkd loader img/s (crops/s) | fkd stored crops img/s (crops/s) | stored crops/s per worker | minor faults/image: loader, stored |"
echo "|---|---|---|---|---|---|---|---|"
malloc=
for s in 500x375 224x224; do
  folder=$out/imagefolder-$s-x$copies
  if [ ! -d "$folder/train/x" ]; then
    mkdir -p "$folder/train/x" "$folder/val/x"
    for ((k = 0; k < copies; ++k)); do
      for f in "$out/$s"/*.jpg; do ln -sf "$f" "$folder/train/x/$(basename "$f" .jpg)_$k.jpg"; done
    done
    ln -sf "$out/$s/img_0000.jpg" "$folder/val/x/"
  fi
  for w in $workers; do
    # The window of batches in flight grows with the workers (LoaderOptions::prefetch).
    res=$("$bin" "$folder" --rounds "$rounds" --workers "$w" --batch-images "$batch_images")
    malloc=$(grep '^malloc' <<< "$res" | cut -d' ' -f2-)
    awk -v size="$s" -v w="$w" -v res="$res" 'BEGIN {
      n = split(res, lines, "\n")
      for (i = 1; i <= n; i++) { split(lines[i], f, " "); k = f[1] " " f[2]; rate[k] = f[3]; crops[k] = f[4]; flt[k] = f[5] }
      for (k = 1; k <= 4; k *= 2) {
        printf "| %s | %d | %d | %.0f | %.0f (%.0f) | %.0f (%.0f) | %.0f | %.1f, %.1f |\n", size, k, w, \
          rate["decode 0"], rate["loader " k], crops["loader " k], rate["store " k], crops["store " k], \
          crops["store " k] / w, flt["loader " k], flt["store " k]
      }
    }'
  done
done
echo
echo "- malloc: $malloc"
echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
