#!/usr/bin/env bash
# Online KD in each precision: `fkd train --teacher` (a traced torchvision resnet50, 10
# classes, random weights: only its compute matters) with a resnet18 student on 224-px
# RandomResizedCrop crops of the 500x375 JPEGs of bench/jpegs.sh, `--amp off` against
# `--amp bf16`; beside it the student's own step (the same run without the teacher), so the
# teacher's share of a KD step, and how much of it bf16 takes away, can be read off:
# teacher s/img = 1/KD rate - 1/student rate. The four runs alternate for --rounds rounds;
# the table takes each one's median.
#
# usage: bench/run_kd_precision.sh [BUILD_DIR] [--images N] [--batch B] [--threads T]
#          [--rounds R]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
images=128 batch=32 threads=2 rounds=3
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$root/bench/out"
data=$tmp/jpegs
jpeg_image_folder "$root" "$data" "$images" 10
/usr/bin/python3 - "$tmp/teacher.pt" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet50(num_classes=10).eval()
torch.jit.trace(m, torch.randn(1, 3, 224, 224)).save(sys.argv[1])
PY

# run MODE AMP: one epoch; prints its training samples/s
run() {
  rm -rf "$tmp/run"
  local teacher=()
  [ "$1" = kd ] && teacher=(--teacher "$tmp/teacher.pt")
  "$build/fkd" train --data "$data" --model resnet18 --input-size 224 --aug rrc \
    "${teacher[@]}" --epochs 1 --batch-size "$batch" --threads "$threads" --workers 1 \
    --amp "$2" --seed 0 --out "$tmp/run" > /dev/null
  grep -o '"samples_per_s": *[0-9.]*' "$tmp/run/metrics.jsonl" | tail -n 1 | grep -o '[0-9.]*$'
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A rates=()
for r in $(seq "$rounds"); do
  line="round $r:"
  for mode in kd student; do
    for amp in off bf16; do
      x=$(run "$mode" "$amp")
      rates[$mode-$amp]+="$x "
      line+=" $mode $amp $x"
    done
  done
  echo "$line" >&2
done
# shellcheck disable=SC2086
kd_off=$(median ${rates[kd-off]}) kd_bf16=$(median ${rates[kd-bf16]})
# shellcheck disable=SC2086
st_off=$(median ${rates[student-off]}) st_bf16=$(median ${rates[student-bf16]})
echo "| student / teacher | threads | batch | online KD img/s off / bf16 | bf16 / off | student alone img/s off / bf16 | bf16 / off | teacher ms/img off / bf16 (KD - student) | bf16 / off |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "$threads $batch $kd_off $kd_bf16 $st_off $st_bf16" | awk '{
  t_off = 1000 / $3 - 1000 / $5; t_bf16 = 1000 / $4 - 1000 / $6
  printf "| resnet18 / tv-resnet50 (224 px) | %d | %d | %.2f / %.2f | %.2fx | %.2f / %.2f | %.2fx | %.1f / %.1f | %.2fx |\n",
    $1, $2, $3, $4, $4 / $3, $5, $6, $6 / $5, t_off, t_bf16, t_off / t_bf16 }'
