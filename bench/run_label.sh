#!/usr/bin/env bash
# Labeling throughput: `fkd label` beside a python3-torch script doing the same work
# (bench/label_torch.py) with the same TorchScript teacher, images, crops and threads:
# teacher eager (as the reference runs it) and frozen + optimize_for_inference.
#
# usage: bench/run_label.sh [BUILD_DIR] [--model resnet20] [--images N] [--crops N] [--threads T]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
model=resnet20 images=400 crops=50 threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --crops) crops=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$model" "$tmp/teacher.pt" <<'PY'
import sys, torch
sys.path.insert(0, "python")
import fkd_models
torch.manual_seed(0)
m = fkd_models.make_model(sys.argv[1], 1, 10).eval()
torch.jit.trace(m, torch.randn(2, 1, 28, 28)).save(sys.argv[2])
PY
fkd_line=$("$build/fkd" label --teacher "$tmp/teacher.pt" --data fashion-mnist --limit "$images" \
  --crops "$crops" --batch 256 --threads "$threads" --workers 1 --out "$tmp/store")
fkd_rate=$(echo "$fkd_line" | grep -o '[0-9.]* crops/s' | cut -d' ' -f1)
fkd_busy=$(echo "$fkd_line" | grep -o 'busy [0-9]*%' | cut -d' ' -f2)
eager=$(/usr/bin/python3 "$root/bench/label_torch.py" "$tmp/teacher.pt" --mode eager \
  --images "$images" --crops "$crops" --threads "$threads")
opt=$(/usr/bin/python3 "$root/bench/label_torch.py" "$tmp/teacher.pt" --mode optimized \
  --images "$images" --crops "$crops" --threads "$threads")
rate() { echo "$1" | grep -o '"crops_per_s": [0-9.]*' | cut -d' ' -f2; }
busy() { echo "$1" | grep -o '"teacher_busy": [0-9.]*' | cut -d' ' -f2; }
echo "| teacher | threads | images x crops | fkd crops/s (teacher busy) | python eager crops/s (busy) | python optimized crops/s (busy) | fkd / eager | fkd / optimized |"
echo "|---|---|---|---|---|---|---|---|"
echo "$model $threads $images $crops $fkd_rate $fkd_busy $(rate "$eager") $(busy "$eager") $(rate "$opt") $(busy "$opt")" |
  awk '{printf "| %s | %d | %dx%d | %.0f (%s) | %.0f (%.0f%%) | %.0f (%.0f%%) | %.2fx | %.2fx |\n", $1, $2, $3, $4, $5, $6, $7, 100*$8, $9, 100*$10, $5/$7, $5/$9}'
