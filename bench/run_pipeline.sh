#!/usr/bin/env bash
# fkd's single-thread training-image pipeline beside torchvision's, on the same JPEGs.
# Builds nothing: build bench_core_pipeline first, e.g.
#   cmake --build build --target bench_core_pipeline
#
# usage: bench/run_pipeline.sh [BUILD_DIR] [--rounds R] [--crops 1,2,4]
#   BUILD_DIR defaults to ./build; the options go to both programs.
#   JPEGs (200 per size, 500x375 and 224x224) are made once in bench/out/ by
#   bench/make_jpegs.py. Prints a Markdown table; rates are per CPU-second of one thread,
#   best of several rounds per file (see the two programs' headers).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
opts=("$@")
bin=$build/bench/bench_core_pipeline
python=/usr/bin/python3
out=$root/bench/out
sizes=(500x375 224x224)

[ -x "$bin" ] || { echo "no $bin: build the bench_core_pipeline target first" >&2; exit 1; }
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$out"

echo "| source | crops/image | fkd decode img/s | fkd pipeline img/s (crops/s) | pipeline/decode | fkd row-band pipeline img/s | band/decode | torchvision img/s (crops/s) | fkd/torchvision |"
echo "|---|---|---|---|---|---|---|---|---|"
for s in "${sizes[@]}"; do
  echo "running $s ..." >&2
  fkd=$("$bin" "$out/$s" "${opts[@]}")
  tv=$("$python" "$root/bench/pipeline_torchvision.py" "$out/$s" "${opts[@]}")
  # Both print lines "MODE K IMAGES_PER_S CROPS_PER_S".
  awk -v size="$s" -v fkd="$fkd" -v tv="$tv" 'BEGIN {
    n = split(fkd, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); rate[f[1] " " f[2]] = f[3]; crops[f[1] " " f[2]] = f[4] }
    n = split(tv, lines, "\n")
    for (i = 1; i <= n; i++) { split(lines[i], f, " "); tvrate[f[1] " " f[2]] = f[3]; tvcrops[f[1] " " f[2]] = f[4] }
    dec = rate["decode 0"]
    for (k = 1; k <= 4; k *= 2) {
      p = rate["pipeline " k]; b = rate["rows " k]; t = tvrate["pipeline " k]
      if (p == "") continue
      printf "| %s | %d | %.0f | %.0f (%.0f) | %.2f | %.0f | %.2f | %.0f (%.0f) | %.2fx |\n", \
        size, k, dec, p, crops["pipeline " k], p / dec, b, b / dec, t, tvcrops["pipeline " k], p / t
    }
    printf "| %s | decode only | %.0f | | | | | %.0f (PIL) | %.2fx |\n", size, dec, tvrate["decode 0"], dec / tvrate["decode 0"]
  }'
done
