#!/usr/bin/env bash
# The fkd loader (one worker thread) beside decode alone and beside torchvision's
# pipeline, on the same JPEGs laid out as an ImageFolder.
#
# usage: bench/run_loader.sh [BUILD_DIR] [--rounds R]
# Needs the bench_core_loader target built. JPEGs come from bench/make_jpegs.py (as in
# run_pipeline.sh); torchvision's figures come from bench/pipeline_torchvision.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
opts=("$@")
bin=$build/bench/bench_core_loader
python=/usr/bin/python3
out=$root/bench/out
[ -x "$bin" ] || { echo "no $bin: build the bench_core_loader target first" >&2; exit 1; }
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$out"
echo "| source | crops/image | decode only img/s | fkd loader img/s (crops/s) | loader/decode | torchvision img/s (crops/s) | fkd/torchvision |"
echo "|---|---|---|---|---|---|---|"
for s in 500x375 224x224; do
  folder=$out/imagefolder-$s
  if [ ! -d "$folder/train/x" ]; then
    mkdir -p "$folder/train/x" "$folder/val/x"
    for f in "$out/$s"/*.jpg; do ln -sf "$f" "$folder/train/x/"; done
    ln -sf "$out/$s/img_0000.jpg" "$folder/val/x/"
  fi
  fkd=$("$bin" "$folder" "${opts[@]}")
  tv=$("$python" "$root/bench/pipeline_torchvision.py" "$out/$s" "${opts[@]}")
  awk -v size="$s" -v fkd="$fkd" -v tv="$tv" 'BEGIN {
    n = split(fkd, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); rate[f[1] " " f[2]] = f[3]; crops[f[1] " " f[2]] = f[4] }
    n = split(tv, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); tvrate[f[1] " " f[2]] = f[3]; tvcrops[f[1] " " f[2]] = f[4] }
    dec = rate["decode 0"]
    for (k = 1; k <= 4; k *= 2) {
      p = rate["loader " k]; t = tvrate["pipeline " k]
      printf "| %s | %d | %.0f | %.0f (%.0f) | %.2f | %.0f (%.0f) | %.2fx |\n", size, k, dec, p, crops["loader " k], p / dec, t, tvcrops["pipeline " k], p / t
    }
  }'
done
