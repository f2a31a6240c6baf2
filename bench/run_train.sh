#!/usr/bin/env bash
# Supervised training throughput: fkd beside a python3-torch script training the same
# model (python/fkd_models.py) with the same recipe, batch size and thread count on the
# same Fashion-MNIST subset. Alternates the two programs and keeps each one's best run.
#
# usage: bench/run_train.sh [BUILD_DIR] [--images N] [--threads T] [--rounds R]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
images=12800 threads=2 rounds=2
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| model | threads | fkd samples/s | fkd channels-last off | python3-torch samples/s | python channels_last | fkd / python |"
echo "|---|---|---|---|---|---|---|"
for model in tiny resnet20; do
  best_f=0 best_fn=0 best_p=0 best_pc=0
  for r in $(seq "$rounds"); do
    for cl in --channels-last --no-channels-last; do
      rm -rf "$tmp/run"
      "$build/fkd" train --model "$model" --epochs 1 --limit-train "$images" --limit-val 256 \
        --threads "$threads" --workers 1 $cl --out "$tmp/run" > /dev/null
      s=$(grep -o '"samples_per_s":[0-9.]*' "$tmp/run/metrics.jsonl" | cut -d: -f2)
      if [ "$cl" = --channels-last ]; then
        best_f=$(echo "$s $best_f" | awk '{print ($1 > $2) ? $1 : $2}')
      else
        best_fn=$(echo "$s $best_fn" | awk '{print ($1 > $2) ? $1 : $2}')
      fi
    done
    for cl in "" --channels-last; do
      s=$(/usr/bin/python3 "$root/bench/train_torch.py" --model "$model" --threads "$threads" \
          --workers 1 --limit "$images" $cl | grep -o '"samples_per_s": [0-9.]*' | cut -d' ' -f2)
      if [ -z "$cl" ]; then
        best_p=$(echo "$s $best_p" | awk '{print ($1 > $2) ? $1 : $2}')
      else
        best_pc=$(echo "$s $best_pc" | awk '{print ($1 > $2) ? $1 : $2}')
      fi
    done
  done
  echo "$model $threads $best_f $best_fn $best_p $best_pc" |
    awk '{printf "| %s | %d | %.0f | %.0f | %.0f | %.0f | %.2fx (%.2fx vs channels_last) |\n", $1, $2, $3, $4, $5, $6, $3 / $5, $3 / $6}'
done
