#!/usr/bin/env bash
# Training at ImageNet-like scale on this machine: 224-px crops of 500x375 JPEGs, a resnet50
# teacher, resnet18 and resnet50 students; plain, FKD with m = 1, 2, 4 stored crops per decoded
# image, and online KD; with and without --amp bf16. Beside it bench/fkd_torch.py doing plain
# and FKD training the PyTorch way (DataLoader workers, torchvision transforms, the same
# model, threads and batch size).
#
# usage: bench/run_scale.sh [BUILD_DIR] [--classes C] [--per-class P] [--batch B]
#          [--threads T] [--workers W] [--students "resnet18 resnet50"] [--amps "off bf16"]
#          [--modes "plain fkd1 fkd2 fkd4 kd fkd4u8"] [--python-modes "plain fkd1 fkd2 fkd4"]
#          [--fresh-labels]
#
# Data: C class folders (default 100) of P images each (default 2), links to the 200 500x375
# JPEGs of bench/make_jpegs.py; 1 val image per class. Teacher: torchvision resnet50 with
# RANDOM weights traced to TorchScript (speed only; its labels are noise). Labels:
# `fkd label --crops 8 --input-size 224` (enough for 2 passes at m = 4), timed with and
# without --amp bf16. Each training run makes 2 passes over the images (FKD: one pass is m
# epochs); its rate is the second pass's (metrics.jsonl samples_per_s), so start-up and the
# first steps are left out; data_seconds says how long its steps waited for the loader.
# The Python runs time from their 6th step on (fkd_torch.py --max-batches). The loader alone
# (bench_core_fkd_pipeline: decode, crops, labels, batching; no model) gives crops/s per core
# for each m. bench/step_bound.py gives the bound: the student's own step with no data.
# Mode fkd4u8 is fkd4 with --input-format uint8. Writes bench/out/scale/results.jsonl and
# prints Markdown tables.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
classes=100 per_class=2 batch=32 threads=2 workers=2
students="resnet18 resnet50" amps="off bf16" modes="plain fkd1 fkd2 fkd4 kd"
pymodes="plain fkd1 fkd2 fkd4" fresh=0
while [ $# -gt 0 ]; do
  case $1 in
    --classes) classes=$2; shift 2 ;;
    --per-class) per_class=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --students) students=$2; shift 2 ;;
    --amps) amps=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --python-modes) pymodes=$2; shift 2 ;;
    --fresh-labels) fresh=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
py=/usr/bin/python3
fkd=$build/fkd
out=$root/bench/out/scale
data=$out/data
images=$((classes * per_class))
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$root/bench/out"

jpeg_image_folder "$root" "$data" "$images" "$classes"

teacher=$out/teacher-resnet50-$classes.pt
if [ ! -f "$teacher" ]; then
  "$py" - "$classes" "$teacher" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet50(num_classes=int(sys.argv[1])).eval()
torch.jit.trace(m, torch.randn(1, 3, 224, 224)).save(sys.argv[2])
PY
fi

record() { echo "$1" >> "$results"; }

# Labeling: the teacher's forward pass is the bound; label's own summary line says how much
# of the time it took.
# A complete store of an earlier run of the same data is kept (--fresh-labels remakes it).
for amp in $amps; do
  if [ "$fresh" = 1 ] || ! grep -q "the store is complete" "$out/label-$amp.log" 2>/dev/null; then
    rm -rf "$out/labels-$amp"
    "$fkd" label --teacher "$teacher" --data "$data" --out "$out/labels-$amp" --crops 8 \
    --input-size 224 --batch 32 --threads "$threads" --workers "$workers" --amp "$amp" \
    > "$out/label-$amp.log" 2>&1
  fi
  line=$(grep -E "crops/s" "$out/label-$amp.log" | tail -1)
  echo "label amp $amp: $line" >&2
  record "{\"what\": \"label\", \"amp\": \"$amp\", \"line\": \"$(echo "$line" | sed 's/"/\\"/g')\"}"
done
labels=$out/labels-off

# The loader alone, per m: crops/s of W workers, per core.
for m in 1 2 4; do
  r=$("$build/bench/bench_core_fkd_pipeline" "$data" "$labels" --num-crops "$m" \
    --batch "$batch" --workers "$workers" --passes 10 --size 224 | grep '"fkd"')
  echo "loader m=$m: $r" >&2
  record "{\"what\": \"loader\", \"m\": $m, \"workers\": $workers, \"result\": $r}"
done

# Training runs: 2 passes; the second pass's rate.
mkdir -p "$out/runs"
for student in $students; do
  for amp in $amps; do
    for mode in $modes; do
      run=$out/runs/$student-$amp-$mode
      rm -rf "$run"
      args=(train --model "$student" --data "$data" --input-size 224 --batch-size "$batch"
        --threads "$threads" --workers "$workers" --amp "$amp" --out "$run" --lr 0.05)
      case $mode in
        plain) args+=(--aug rrc --epochs 2) ;;
        fkd4u8) args+=(--labels "$labels" --num-crops 4 --epochs 8 --input-format uint8) ;;
        fkd*) m=${mode#fkd}; args+=(--labels "$labels" --num-crops "$m" --epochs $((2 * m))) ;;
        kd) args+=(--teacher "$teacher" --aug rrc --epochs 2) ;;
      esac
      "$fkd" "${args[@]}" > "$run.log" 2>&1 || { echo "failed: $run.log" >&2; tail -3 "$run.log" >&2; continue; }
      last=$(tail -1 "$run/metrics.jsonl")
      echo "fkd $student $amp $mode: $(echo "$last" | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("%.2f samples/s, data wait %.1f of %.1f s" % (d["samples_per_s"], d["data_seconds"], d["train_seconds"]))')" >&2
      record "{\"what\": \"train\", \"side\": \"fkd\", \"student\": \"$student\", \"amp\": \"$amp\", \"mode\": \"$mode\", \"metrics\": $last}"
    done
  done
done

# The PyTorch way: reference-layout label files of the same shapes (8 crops, top-5, fp16).
if [ ! -d "$out/reflabels" ]; then
  "$py" "$root/bench/fkd_torch.py" make-labels "$data" "$out/reflabels" --crops 8 --fp16 \
    > /dev/null
fi
for student in $students; do
  for amp in $amps; do
    for mode in $pymodes; do
      args=(train "$data" "$out/reflabels" --model "$student" --input-size 224
        --batch-size "$batch" --threads "$threads" --workers "$workers" --amp "$amp"
        --max-batches 12 --epochs 100 --json)
      case $mode in
        plain) args+=(--plain) ;;
        fkd*) args+=(--num-crops "${mode#fkd}") ;;
      esac
      r=$("$py" "$root/bench/fkd_torch.py" "${args[@]}" 2>/dev/null | tail -1) || { echo "python $student $amp $mode failed" >&2; continue; }
      echo "python $student $amp $mode: $r" >&2
      record "{\"what\": \"train\", \"side\": \"python\", \"student\": \"$student\", \"amp\": \"$amp\", \"mode\": \"$mode\", \"result\": $r}"
    done
  done
done

# The bound: the student's own step on a fixed batch, no data at all (bench/step_bound.py),
# in fkd's layout (channels-last) and the Python runs' (contiguous).
for student in $students; do
  for amp in $amps; do
    for cl in --channels-last ""; do
      r=$("$py" "$root/bench/step_bound.py" --model "$student" --classes "$classes" \
        --batch-size "$batch" --threads "$threads" --amp "$amp" $cl --json)
      echo "step bound $student $amp ${cl:-contiguous}: $r" >&2
      record "{\"what\": \"bound\", \"student\": \"$student\", \"amp\": \"$amp\", \"result\": $r}"
    done
  done
done

"$py" - "$results" "$threads" "$workers" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, workers = sys.argv[2], sys.argv[3]
print("\nloader alone (%s workers): crops/s, per core" % workers)
print("| m | crops/s | per core |\n|---:|---:|---:|")
for r in rows:
    if r["what"] == "loader":
        v = r["result"]["samples_per_s"]
        print("| %d | %.0f | %.0f |" % (r["m"], v, v / int(workers)))
bound = {(r["student"], r["amp"], r["result"]["channels_last"]): r["result"]["samples_per_s"]
         for r in rows if r["what"] == "bound"}
print("\nthe student's step alone (no data), samples/s: channels-last / contiguous")
for (s, amp, cl), v in sorted(bound.items()):
    if cl:
        print("  %s %s: %.2f / %.2f" % (s, amp, v, bound.get((s, amp, False), 0)))
print("\ntraining, samples/s (threads %s, workers %s; fkd: data wait share of the pass)" % (threads, workers))
print("| student | amp | mode | fkd | fkd data wait | python | fkd / python |\n|---|---|---|---:|---:|---:|---:|")
py = {(r["student"], r["amp"], r["mode"]): r["result"]["samples_per_s"]
      for r in rows if r["what"] == "train" and r["side"] == "python"}
for r in rows:
    if r["what"] == "train" and r["side"] == "fkd":
        m = r["metrics"]
        k = (r["student"], r["amp"], r["mode"])
        p = py.get(k)
        print("| %s | %s | %s | %.2f | %.0f%% | %s | %s |" % (
            k[0], k[1], k[2], m["samples_per_s"],
            100 * m["data_seconds"] / max(m["train_seconds"], 1e-9),
            "%.2f" % p if p else "", "%.2fx" % (m["samples_per_s"] / p) if p else ""))
PY
