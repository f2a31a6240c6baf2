#!/usr/bin/env bash
# Labeling throughput: `fkd label` beside a python3-torch script doing the same work
# (bench/label_torch.py) with the same TorchScript teacher, images, crops and threads:
# teacher eager (as the reference runs it) and frozen + optimize_for_inference. The three
# programs alternate for --rounds rounds; each keeps its fastest round (this machine is
# shared and noisy; the best round is the one least disturbed).
#
# Then the teacher's precision: `fkd label --amp off` and `--amp bf16` on the same crops,
# beside the bound of each, PyTorch's forward pass alone on the same file (bench/
# teacher_bound.py: torch.jit.load, channels-last input, torch.autocast for bf16; fkd feeds
# its bf16 teacher channels-last too), alternating for --rounds rounds, the median of each.
#
# usage: bench/run_label.sh [BUILD_DIR] [--model resnet20|tv-resnet50] [--images N]
#          [--crops N] [--batch B] [--threads T] [--rounds R] [--precision-only]
# --model tv-resnet50: torchvision's resnet50 (10 classes, random weights: only its compute
# matters) on 224-px crops of the 500x375 JPEGs of bench/jpegs.sh; resnet20: fkd's resnet20
# on Fashion-MNIST. --precision-only skips the first table (which needs Fashion-MNIST).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
model=resnet20 images="" crops="" batch="" threads=2 rounds=3 precision_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --crops) crops=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --precision-only) precision_only=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$model" = tv-resnet50 ]; then
  images=${images:-128} crops=${crops:-8} batch=${batch:-32} size=224 channels=3
  precision_only=1
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
  label_data=(--data "$data" --input-size 224)
else
  images=${images:-400} crops=${crops:-50} batch=${batch:-256} size=28 channels=1
  /usr/bin/python3 - "$model" "$tmp/teacher.pt" <<'PY'
import sys, torch
sys.path.insert(0, "python")
import fkd_models
torch.manual_seed(0)
m = fkd_models.make_model(sys.argv[1], 1, 10).eval()
torch.jit.trace(m, torch.randn(2, 1, 28, 28)).save(sys.argv[2])
PY
  label_data=(--data fashion-mnist --limit "$images")
fi
rate() { echo "$1" | grep -o '"crops_per_s": [0-9.]*' | cut -d' ' -f2; }
busy() { echo "$1" | grep -o '"teacher_busy": [0-9.]*' | cut -d' ' -f2; }
better() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
# fkd_label AMP: one labeling run; prints "crops/s busy%"
fkd_label() {
  rm -rf "$tmp/store"
  local line
  line=$("$build/fkd" label --teacher "$tmp/teacher.pt" "${label_data[@]}" --crops "$crops" \
    --batch "$batch" --threads "$threads" --workers 1 --amp "$1" --out "$tmp/store")
  echo "$(echo "$line" | grep -o '[0-9.]* crops/s' | cut -d' ' -f1)" \
    "$(echo "$line" | grep -o 'busy [0-9]*%' | cut -d' ' -f2 | tr -d %)"
}

if [ "$precision_only" = 0 ]; then
  fkd_rate=0 fkd_busy=0 eager_rate=0 eager_busy=0 opt_rate=0 opt_busy=0
  for r in $(seq "$rounds"); do
    read -r x b < <(fkd_label off)
    if better "$x" "$fkd_rate"; then fkd_rate=$x fkd_busy=$b; fi
    for mode in eager optimized; do
      j=$(/usr/bin/python3 "$root/bench/label_torch.py" "$tmp/teacher.pt" --mode "$mode" \
        --images "$images" --crops "$crops" --threads "$threads")
      x=$(rate "$j")
      if [ "$mode" = eager ]; then
        better "$x" "$eager_rate" && eager_rate=$x eager_busy=$(busy "$j")
      else
        better "$x" "$opt_rate" && opt_rate=$x opt_busy=$(busy "$j")
      fi
    done
    echo "round $r: fkd $fkd_rate, eager $eager_rate, optimized $opt_rate (best so far)" >&2
  done
  echo "| teacher | threads | images x crops | fkd crops/s (teacher busy) | python eager crops/s (busy) | python optimized crops/s (busy) | fkd / eager | fkd / optimized |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "$model $threads $images $crops $fkd_rate $fkd_busy $eager_rate $eager_busy $opt_rate $opt_busy" |
    awk '{printf "| %s | %d | %dx%d | %.0f (%d%%) | %.0f (%.0f%%) | %.0f (%.0f%%) | %.2fx | %.2fx |\n", $1, $2, $3, $4, $5, $6, $7, 100*$8, $9, 100*$10, $5/$7, $5/$9}'
  echo
fi

# Every round's figures; the table takes each one's median over the rounds.
offs=() off_busys=() bf16s=() bf16_busys=() bounds_off=() bounds_bf16=()
for r in $(seq "$rounds"); do
  read -r x b < <(fkd_label off)
  offs+=("$x") off_busys+=("$b")
  read -r y c < <(fkd_label bf16)
  bf16s+=("$y") bf16_busys+=("$c")
  for amp in off bf16; do
    j=$(/usr/bin/python3 "$root/bench/teacher_bound.py" "$tmp/teacher.pt" --input-size "$size" \
      --channels "$channels" --batch "$batch" --threads "$threads" --channels-last --amp "$amp" \
      --json)
    if [ "$amp" = off ]; then bounds_off+=("$(rate "$j")"); else bounds_bf16+=("$(rate "$j")"); fi
  done
  echo "round $r: fkd off $x (busy $b%), bf16 $y (busy $c%); PyTorch forward off" \
    "${bounds_off[-1]}, bf16 ${bounds_bf16[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
off=$(median "${offs[@]}") off_busy=$(median "${off_busys[@]}")
bf16=$(median "${bf16s[@]}") bf16_busy=$(median "${bf16_busys[@]}")
bound_off=$(median "${bounds_off[@]}") bound_bf16=$(median "${bounds_bf16[@]}")
echo "| teacher | threads | batch | fkd --amp off crops/s (busy) | fkd --amp bf16 crops/s (busy) | bf16 / off | PyTorch forward fp32 / bf16 (channels-last) | fkd off / PyTorch fp32 | fkd bf16 / PyTorch bf16 |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "$model $threads $batch $off $off_busy $bf16 $bf16_busy $bound_off $bound_bf16" |
  awk '{printf "| %s | %d | %d | %.1f (%d%%) | %.1f (%d%%) | %.2fx | %.1f / %.1f | %.2fx | %.2fx |\n", $1, $2, $3, $4, $5, $6, $7, $6/$4, $8, $9, $4/$8, $6/$9}'
