#!/usr/bin/env bash
# FKD end to end on JPEGs: `fkd label` with a resnet teacher, then `fkd train --labels` with a
# resnet18 student at 224 px for m = 1, 2, 4 stored crops per image per pass, beside
# bench/fkd_torch.py doing the same the reference way (one label pickle per image, torchvision
# crops in DataLoader workers). For each m: the loader alone (decode, crops, soft labels,
# batching; no model) and training, in samples (crops) per second.
#
# usage: bench/run_fkd_e2e.sh [BUILD_DIR] [--images N] [--epochs E] [--crops "1 2 4"]
#          [--batch B] [--threads T] [--workers W] [--pipeline-workers W]
#          [--teacher resnet18|resnet50]
# Data: the 500x375 JPEGs of bench/make_jpegs.py, N of them (default 128) spread over 10
# class folders. Teacher: a torchvision model with RANDOM weights traced to TorchScript (only
# speed is measured here; the labels are noise). fkd's labels: `fkd label --crops E`, enough
# for E effective epochs at any m; the python side gets its own pickles of the same shapes
# (fkd_torch.py make-labels, fp16). Both sides run with the same threads, loader workers,
# batch size, OMP_WAIT_POLICY=passive and glibc malloc settings (fkd's library applies them;
# fkd_torch.py gives itself the same through GLIBC_TUNABLES, bench/malloc_tunables.py).
# Training: fkd's samples/s is the mean over passes after the first (over all passes when
# there is one), fkd_torch.py's from its 6th step on: both leave out the warm-up.
# Loader alone: bench_core_fkd_pipeline (3 passes after a warm-up one) and fkd_torch.py
# --pipeline-only. Writes bench/out/e2e/results.jsonl; prints a Markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
images=128 epochs=8 crops="1 2 4" batch=32 threads=2 workers=1 pworkers=2 teacher=resnet18
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --crops) crops=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --pipeline-workers) pworkers=$2; shift 2 ;;
    --teacher) teacher=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
py=/usr/bin/python3
fkd=$build/fkd
out=$root/bench/out/e2e
data=$out/data
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$root/bench/out"

# The ImageFolder: image k in class k % 10; one val image per class.
jpeg_image_folder "$root" "$data" "$images"

# The teacher: random weights, traced at 224 px.
if [ ! -f "$out/teacher-$teacher.pt" ]; then
  "$py" - "$teacher" "$out/teacher-$teacher.pt" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[1])(num_classes=10).eval()
torch.jit.trace(model, torch.randn(1, 3, 224, 224)).save(sys.argv[2])
PY
fi

# Labels: fkd's store and the reference's pickles, E crops per image.
rm -rf "$out/labels" "$out/reflabels"
t0=$(date +%s.%N)
"$fkd" label --teacher "$out/teacher-$teacher.pt" --data "$data" --out "$out/labels" \
  --crops "$epochs" --input-size 224 --batch 64 --threads "$threads" --workers "$workers" \
  > "$out/label.log"
echo "fkd label: $images images x $epochs crops, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}') s ($teacher teacher)" >&2
"$py" "$root/bench/fkd_torch.py" make-labels "$data" \
  "$out/reflabels" --crops "$epochs" --classes 10 --scale 0.08 1.0 --fp16 > /dev/null

for m in $crops; do
  # fkd, loader alone.
  "$build/bench/bench_core_fkd_pipeline" "$data" "$out/labels" --num-crops "$m" --batch "$batch" \
    --workers "$pworkers" --passes 3 --size 224 |
    "$py" -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r["pipeline"] == "fkd":
        print(json.dumps({"impl": "fkd", "what": "loader", "m": int(sys.argv[1]), "samples_per_s": r["samples_per_s"]}))' \
      "$m" >> "$results"
  # fkd, training.
  run=$out/run-m$m
  rm -rf "$run"
  "$fkd" train --model resnet18 --data "$data" --labels "$out/labels" --num-crops "$m" \
    --epochs "$epochs" --batch-size "$batch" --input-size 224 --threads "$threads" \
    --workers "$workers" --out "$run" > "$run.log"
  "$py" - "$run/metrics.jsonl" "$m" >> "$results" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
timed = lines[1:] or lines
samples = sum(l["samples_per_s"] * l["train_seconds"] for l in timed)
seconds = sum(l["train_seconds"] for l in timed)
print(json.dumps({"impl": "fkd", "what": "train", "m": int(sys.argv[2]),
                  "samples_per_s": samples / seconds, "passes_timed": len(timed)}))
PY
  # The reference way, loader alone and training.
  for what in loader train; do
    flag=(); [ $what = loader ] && flag=(--pipeline-only)
    w=$workers; [ $what = loader ] && w=$pworkers
    "$py" "$root/bench/fkd_torch.py" train "$data" \
      "$out/reflabels" --model resnet18 --num-crops "$m" --epochs "$epochs" --batch-size "$batch" \
      --workers "$w" --threads "$threads" --input-size 224 --json "${flag[@]}" 2> "$out/py-$what-m$m.log" |
      "$py" -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps({"impl": "python", "what": sys.argv[1], "m": int(sys.argv[2]), "samples_per_s": r["samples_per_s"]}))' \
        "$what" "$m" >> "$results"
  done
done

"$py" - "$results" "$images" "$epochs" "$batch" "$threads" "$workers" "$pworkers" "$teacher" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
images, epochs, batch, threads, workers, pworkers, teacher = sys.argv[2:9]
print(f"{images} JPEGs (500x375, 10 classes), resnet18 student at 224 px, {epochs} effective "
      f"epochs, batch {batch} crops, {threads} threads, {workers} loader worker(s) in training, "
      f"{pworkers} for the loader alone; labels from a {teacher} teacher with random weights\n")
print("| m | what | fkd samples/s | python reference samples/s | fkd / python |")
print("|---|---|---:|---:|---:|")
for m in sorted({r["m"] for r in rows}):
    for what, name in (("loader", "loader alone"), ("train", "training")):
        f = next((r for r in rows if r["m"] == m and r["what"] == what and r["impl"] == "fkd"), None)
        p = next((r for r in rows if r["m"] == m and r["what"] == what and r["impl"] == "python"), None)
        if f and p:
            print(f"| {m} | {name} | {f['samples_per_s']:.1f} | {p['samples_per_s']:.1f} | "
                  f"{f['samples_per_s'] / p['samples_per_s']:.2f}x |")
PY
