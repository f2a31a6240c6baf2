#!/usr/bin/env bash
# A TorchScript student beside the zoo's: torchvision's resnet18 (torch.jit.script, first
# convolution adapted to 1 channel, 10 classes) and fkd's zoo resnet18 (torchvision's
# architecture in C++), each trained by `fkd train --labels` (FKD) from the store of
# `fkd demo --quick`: a resnet20 teacher trained on 6,000 Fashion-MNIST images for 2 epochs,
# 8 crops of each of 2,000 images labeled (RandomCrop 28, padding 4, flip). Both students: the
# same 2,000 images, E effective epochs (1 crop per image per pass, as the demo), the default
# recipe (SGD Nesterov, lr 0.1 cosine, weight decay 5e-4, batch 128), the same seed, threads
# and workers, 2,000 test images. Reports the last epoch's test top-1 and the training and
# total wall time of each; writes bench/out/script-student/results.jsonl.
#
# usage: bench/run_script_student.sh [BUILD_DIR] [--epochs E] [--threads T] [--workers W]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
epochs=8 threads=2 workers=1
while [ $# -gt 0 ]; do
  case $1 in
    --epochs) epochs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
py=/usr/bin/python3
fkd=$build/fkd
out=$root/bench/out/script-student
mkdir -p "$out"
exec_opts="--threads $threads --workers $workers"

# The demo's teacher and store (fkd demo --quick's stages 1 and 2), made once.
if [ ! -f "$out/labels/manifest.json" ]; then
  rm -rf "$out/teacher" "$out/labels"
  "$fkd" train --model resnet20 --limit-train 6000 --limit-val 2000 --epochs 2 \
    --label-smoothing 0 $exec_opts --out "$out/teacher" > "$out/teacher.log"
  "$fkd" label --teacher "$out/teacher/checkpoint.pt" --limit 2000 --crops 8 --aug crop \
    $exec_opts --out "$out/labels" > "$out/label.log"
fi
echo "teacher: $(tail -n 1 "$out/teacher/metrics.jsonl")" >&2

# The scripted student.
"$py" - "$out/resnet18-script.pt" <<'PY'
import sys, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=10)
m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
torch.nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
torch.jit.script(m).save(sys.argv[1])
PY

results=$out/results.jsonl
: > "$results"
for model in resnet18 "$out/resnet18-script.pt"; do
  name=$([ "$model" = resnet18 ] && echo "zoo resnet18" || echo "TorchScript resnet18")
  dir=$out/run-$(basename "$model" .pt)
  rm -rf "$dir"
  t0=$(date +%s.%N)
  "$fkd" train --model "$model" --labels "$out/labels" --epochs "$epochs" --num-crops 1 \
    --limit-val 2000 --seed 0 $exec_opts --out "$dir" > "$dir.log"
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  "$py" - "$name" "$dir/metrics.jsonl" "$wall" >> "$results" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
print(json.dumps({"student": sys.argv[1], "top1": lines[-1]["top1"],
                  "train_s": round(sum(l["train_seconds"] for l in lines), 1),
                  "epochs_s": round(sum(l["seconds"] for l in lines), 1),
                  "wall_s": float(sys.argv[3]),
                  "crops_per_s": round(sum(l["samples_per_s"] for l in lines) / len(lines), 1)}))
PY
done

echo "| student | test top-1 | training s | train + eval s | wall s (with start) | crops/s |"
echo "|---|---|---|---|---|---|"
"$py" - "$results" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"| {r['student']} | {r['top1']:.2f}% | {r['train_s']} | {r['epochs_s']} | "
          f"{r['wall_s']} | {r['crops_per_s']} |")
PY
