#!/usr/bin/env bash
# Data-parallel FKD training on one machine: 2 processes x 1 thread (`fkd launch`, Gloo on
# loopback) against 1 process x 2 threads, same global batch, same label store, for the tiny
# and resnet20 students; and, to measure what communication costs, 2 processes x 1 thread
# that do not communicate (each trains half the batch on half the images, alone): the
# shortfall of the data-parallel run against them is the share of step time spent in
# communication that the backward pass did not hide (plus the ranks waiting for each other).
#
# With --baseline OTHER_BUILD it also times 1 process x 2 threads of OTHER_BUILD's fkd
# against this build's (the cost of the data-parallel code to single-process training).
#
# usage: bench/run_dist.sh [BUILD_DIR] [--images N] [--rounds R] [--models "tiny resnet20"]
#          [--baseline OTHER_BUILD]
# Data: the first N (default 8192) Fashion-MNIST training images; labels of a tiny teacher
# trained 1 epoch on 8192 images (`fkd label --crops 4`). Each run: one FKD pass of 4 crops per
# image (--epochs 4 --num-crops 4), global batch 256 crops, 1 loader worker per process.
# samples/s is metrics.jsonl's training throughput (crops per second, evaluation left out).
# Rounds alternate the configurations; the table gives each one's median.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
images=8192 rounds=3 models="tiny resnet20" baseline=""
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
fkd=$build/fkd
out=$root/bench/out/dist
mkdir -p "$out"
port=$((29600 + RANDOM % 300))

half=$((images / 2))
if [ ! -e "$out/teacher/checkpoint.pt" ]; then
  "$fkd" train --model tiny --limit-train 8192 --limit-val 500 --epochs 1 --threads 2 \
    --out "$out/teacher" > /dev/null
fi
# A store of the N images, and one of the first N/2 for the lone processes.
for n in "$images" "$half"; do
  if [ ! -e "$out/labels-$n/manifest.json" ]; then
    rm -rf "$out/labels-$n"
    "$fkd" label --teacher "$out/teacher/checkpoint.pt" --limit "$n" --crops 4 --threads 2 \
      --out "$out/labels-$n" > /dev/null
  fi
done

# train_args MODEL OUT BATCH IMAGES THREADS
train_args() {
  echo train --model "$1" --labels "$out/labels-$4" --limit-train "$4" --limit-val 500 \
    --epochs 4 --num-crops 4 --batch-size "$3" --threads "$5" --workers 1 --out "$2"
}
rate() { /usr/bin/python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["samples_per_s"])' "$1/metrics.jsonl"; }

results=$out/results.jsonl
: > "$results"
record() { echo "{\"model\": \"$1\", \"config\": \"$2\", \"round\": $3, \"samples_per_s\": $4}" >> "$results"; }

for ((r = 1; r <= rounds; ++r)); do
  for m in $models; do
    d=$out/run
    rm -rf "$d"
    "$fkd" $(train_args "$m" "$d/one" 256 "$images" 2) > /dev/null
    record "$m" "1x2" "$r" "$(rate "$d/one")"
    port=$((port + 1))
    "$fkd" launch --nproc-per-node 2 --master-port "$port" -- \
      $(train_args "$m" "$d/two" 256 "$images" 1) > /dev/null
    record "$m" "2x1" "$r" "$(rate "$d/two")"
    # The same work without communication: two lone processes at once, each half the batch
    # on half as many images (both the first N/2: the speed, not the data, is compared).
    "$fkd" $(train_args "$m" "$d/alone0" 128 "$half" 1) > /dev/null &
    p=$!
    "$fkd" $(train_args "$m" "$d/alone1" 128 "$half" 1) > /dev/null
    wait $p
    record "$m" "2x1-alone" "$r" "$(/usr/bin/python3 -c "print($(rate "$d/alone0") + $(rate "$d/alone1"))")"
    if [ -n "$baseline" ]; then
      "$baseline/fkd" $(train_args "$m" "$d/base" 256 "$images" 2) > /dev/null
      record "$m" "1x2-baseline" "$r" "$(rate "$d/base")"
      rm -rf "$d/one"
      "$fkd" $(train_args "$m" "$d/one" 256 "$images" 2) > /dev/null
      record "$m" "1x2-again" "$r" "$(rate "$d/one")"
    fi
  done
done

/usr/bin/python3 - "$results" "$baseline" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
baseline = sys.argv[2]
def med(m, c):
    v = [r["samples_per_s"] for r in rows if r["model"] == m and r["config"] == c]
    return statistics.median(v) if v else None
print("| student | 1 process x 2 threads | 2 processes x 1 thread | 2x1 / 1x2 | 2 lone processes x 1 thread | communication not hidden |")
print("|---|---:|---:|---:|---:|---:|")
for m in dict.fromkeys(r["model"] for r in rows):
    one, two, alone = med(m, "1x2"), med(m, "2x1"), med(m, "2x1-alone")
    print(f"| {m} | {one:.0f} | {two:.0f} | {two / one:.2f} | {alone:.0f} | {100 * (1 - two / alone):.1f}% |")
if baseline:
    print()
    print("| student | this build, 1 x 2 (both runs of a round) | baseline build, 1 x 2 | this / baseline |")
    print("|---|---:|---:|---:|")
    for m in dict.fromkeys(r["model"] for r in rows):
        rounds = sorted({r["round"] for r in rows if r["model"] == m})
        ratios = []
        for k in rounds:
            get = lambda c: [r["samples_per_s"] for r in rows if r["model"] == m and r["config"] == c and r["round"] == k]
            this = statistics.mean(get("1x2") + get("1x2-again"))
            ratios.append(this / get("1x2-baseline")[0])
        this = statistics.median([r["samples_per_s"] for r in rows if r["model"] == m and r["config"] in ("1x2", "1x2-again")])
        print(f"| {m} | {this:.0f} | {med(m, '1x2-baseline'):.0f} | {statistics.median(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)}) |")
EOF
