#!/usr/bin/env bash
# The fkd loader (one worker thread) beside decode alone and beside torchvision's
# pipeline, on the same JPEGs laid out as an ImageFolder.
#
# usage: bench/run_loader.sh [BUILD_DIR] [--rounds R] [bench_core_loader options]
# Needs the bench_core_loader target built. JPEGs come from bench/make_jpegs.py (as in
# run_pipeline.sh); torchvision's figures come from bench/pipeline_torchvision.py, which runs
# with the malloc settings fkd's library applies (it prints them). The options go to both
# programs (each ignores the other's).
#
# The first seven columns are the table's historical ones (random crops, as supervised
# training cuts them); after them come the loader replaying stored crops from a label store
# (what `fkd train --labels` runs), and minor page faults per image of each pipeline. Below
# the table: the malloc configuration each side ran with and the machine's load.
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
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "| source | crops/image | decode only img/s | fkd loader img/s (crops/s) | loader/decode | torchvision img/s (crops/s) | fkd/torchvision | fkd stored crops img/s (crops/s) | stored/torchvision | minor faults/image: fkd loader, stored, torchvision |"
echo "|---|---|---|---|---|---|---|---|---|---|"
notes=()
for s in 500x375 224x224; do
  folder=$out/imagefolder-$s
  if [ ! -d "$folder/train/x" ]; then
    mkdir -p "$folder/train/x" "$folder/val/x"
    for f in "$out/$s"/*.jpg; do ln -sf "$f" "$folder/train/x/"; done
    ln -sf "$out/$s/img_0000.jpg" "$folder/val/x/"
  fi
  fkd=$("$bin" "$folder" "${opts[@]}")
  tv=$("$python" "$root/bench/pipeline_torchvision.py" "$out/$s" "${opts[@]}")
  # Both print lines "MODE K IMAGES_PER_S CROPS_PER_S FAULTS_PER_IMAGE" and one "malloc ...".
  awk -v size="$s" -v fkd="$fkd" -v tv="$tv" 'BEGIN {
    n = split(fkd, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); k = f[1] " " f[2]; rate[k] = f[3]; crops[k] = f[4]; flt[k] = f[5] }
    n = split(tv, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); k = f[1] " " f[2]; tvrate[k] = f[3]; tvcrops[k] = f[4]; tvflt[k] = f[5] }
    dec = rate["decode 0"]
    for (k = 1; k <= 4; k *= 2) {
      p = rate["loader " k]; t = tvrate["pipeline " k]; st = rate["store " k]
      printf "| %s | %d | %.0f | %.0f (%.0f) | %.2f | %.0f (%.0f) | %.2fx | %.0f (%.0f) | %.2fx | %.1f, %.1f, %.1f |\n", \
        size, k, dec, p, crops["loader " k], p / dec, t, tvcrops["pipeline " k], p / t, \
        st, crops["store " k], st / t, flt["loader " k], flt["store " k], tvflt["pipeline " k]
    }
  }'
  notes+=("$s: fkd $(grep '^malloc' <<< "$fkd" | cut -d' ' -f2-); torchvision $(grep '^malloc' <<< "$tv" | cut -d' ' -f2-)")
done
echo
for n in "${notes[@]}"; do echo "- malloc, $n"; done
echo "- load average (1, 5, 15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
