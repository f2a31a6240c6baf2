#!/usr/bin/env bash
# What labeling in bf16 costs: the same crops labeled by the same teacher with `--amp off`
# (float32) and `--amp bf16`, compared crop by crop (bench/label_agreement.py: top-1 and
# top-5 agreement, mean KL of the recovered soft labels), and the demo's FKD student trained
# from each store with several seeds.
#
# Teachers: the demo's (resnet20, 2 epochs on all 60,000 Fashion-MNIST images, hard labels,
# as `fkd demo` trains it) at 28 px, and a 224-px one (resnet18 trained 2 epochs on 2,000
# Fashion-MNIST images upscaled to 224 px by RandomResizedCrop(scale 0.35-1), in bf16 to fit
# two cores).
# Stores: the demo's (4,000 images x 16 RandomCrop(28, 4) + flip crops, marginal_smoothing
# top-5 fp16), and full float32 labels of the same crops (every probability, no
# quantization) for the agreement figures. The control: the float32 teacher's labels stored
# with fp32 values instead of fp16 (the same labels, finer by fp16's rounding, ~1e-4), which
# shows how far students move when their labels change by nothing that matters.
#
# usage: bench/run_teacher_precision.sh [BUILD_DIR] [--seeds "0 1 2"] [--no-224]
# work and logs in bench/out/precision; prints Markdown tables.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
seeds="0 1 2" with224=1
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --no-224) with224=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off PYTHONPATH=$build/python
fkd=$build/fkd
py=/usr/bin/python3
out=$root/bench/out/precision
mkdir -p "$out"
common=(--threads 2 --workers 2)

top1() { tail -1 "$1/metrics.jsonl" | "$py" -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["top1"])'; }
label_rate() { grep -o '[0-9.]* crops/s' "$1" | tail -1 | cut -d' ' -f1; }

# 1. The demo's teacher.
teacher=$out/teacher/checkpoint.pt
if [ ! -f "$teacher" ]; then
  "$fkd" train --data fashion-mnist --model resnet20 --epochs 2 --label-smoothing 0 \
    --limit-val 5000 "${common[@]}" --out "$out/teacher" > "$out/teacher.log"
fi
echo "demo teacher: $(top1 "$out/teacher")% top-1" >&2

# 2. Its labels in both precisions: the demo's store and full float32 labels.
for amp in off bf16 control; do
  for kind in demo full; do
    [ "$amp" = control ] && [ "$kind" = full ] && continue
    store=$out/$kind-$amp
    [ -f "$store/manifest.json" ] && "$fkd" label verify "$store" > /dev/null 2>&1 && continue
    rm -rf "$store"
    extra=(--amp "$amp")
    [ "$kind" = full ] && extra+=(--label-type full --precision fp32)
    [ "$amp" = control ] && extra=(--amp off --precision fp32)
    "$fkd" label --teacher "$teacher" --data fashion-mnist --limit 4000 --crops 16 --aug crop \
      "${extra[@]}" "${common[@]}" --out "$store" > "$out/label-$kind-$amp.log"
  done
done
echo
echo "Agreement of bf16 labels with float32 labels of the same crops (demo teacher, 4,000 images x 16 crops):"
echo
echo "| labels | top-1 agreement | top-5 set agreement | mean KL (nats) | max abs diff | fp32 crops/s | bf16 crops/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for kind in full demo; do
  j=$("$py" "$root/bench/label_agreement.py" "$out/$kind-off" "$out/$kind-bf16" --json)
  echo "$j" | "$py" -c 'import json,sys; d=json.load(sys.stdin); k=sys.argv[1]; name={"full":"full, fp32 values","demo":"demo store (marginal_smoothing top-5, fp16)"}[k]; print("| %s | %.2f%% | %.2f%% | %.2e | %.4f | %s | %s |" % (name, 100*d["top1_agreement"], 100*d["top5_agreement"], d["mean_kl"], d["max_abs_diff"], sys.argv[2], sys.argv[3]))' \
    "$kind" "$(label_rate "$out/label-$kind-off.log")" "$(label_rate "$out/label-$kind-bf16.log")"
done

# 3. The demo's FKD student from each store.
echo
echo "The demo's FKD student (tiny, 16 effective epochs on the 4,000 images, 5,000 test images) from each store:"
echo
row_off="| float32 labels |" row_bf16="| bf16 labels |"
row_control="| float32 labels, fp32 values (control) |"
header="| labels |" rule="|---|"
for seed in $seeds; do
  header+=" seed $seed |"
  rule+="---:|"
  for amp in off bf16 control; do
    run=$out/student-$amp-$seed
    if [ ! -f "$run/checkpoint.pt" ]; then
      rm -rf "$run"
      "$fkd" train --model tiny --data fashion-mnist --labels "$out/demo-$amp" --epochs 16 \
        --limit-train 4000 --limit-val 5000 --num-crops 1 --seed "$seed" "${common[@]}" \
        --out "$run" > "$run.log" 2>&1
    fi
    t=$(top1 "$run")
    echo "student $amp seed $seed: $t%" >&2
    case $amp in
      off) row_off+=" $t% |" ;;
      bf16) row_bf16+=" $t% |" ;;
      control) row_control+=" $t% |" ;;
    esac
  done
done
mean() { echo "$1" | sed 's/^| [^|]* |//' | grep -o '[0-9.]*%' | tr -d % | awk '{s+=$1; n++} END {printf "%.2f%%", s/n}'; }
echo "$header mean |"
echo "$rule---:|"
echo "$row_off $(mean "$row_off") |"
echo "$row_bf16 $(mean "$row_bf16") |"
echo "$row_control $(mean "$row_control") |"
echo
echo "Agreement of the control's labels with the float32 labels: $("$py" "$root/bench/label_agreement.py" "$out/demo-off" "$out/demo-control")"

# 4. A 224-px teacher.
if [ "$with224" = 1 ]; then
  t224=$out/teacher224/checkpoint.pt
  if [ ! -f "$t224" ]; then
    "$fkd" train --data fashion-mnist --model resnet18 --input-size 224 --aug rrc --scale 0.35 1 \
      --limit-train 2000 --limit-val 500 --epochs 2 --batch-size 32 --lr 0.05 --amp bf16 \
      "${common[@]}" --out "$out/teacher224" > "$out/teacher224.log" 2>&1
  fi
  echo "224-px teacher: $(top1 "$out/teacher224")% top-1 (500 test images)" >&2
  for amp in off bf16; do
    store=$out/full224-$amp
    [ -f "$store/manifest.json" ] && "$fkd" label verify "$store" > /dev/null 2>&1 && continue
    rm -rf "$store"
    "$fkd" label --teacher "$t224" --data fashion-mnist --limit 200 --crops 8 --aug rrc \
      --input-size 224 --batch 32 --amp "$amp" --label-type full --precision fp32 \
      "${common[@]}" --out "$store" > "$out/label-full224-$amp.log" 2>&1
  done
  echo
  echo "The same for the 224-px teacher (resnet18, $(top1 "$out/teacher224")% top-1; 200 images x 8 RandomResizedCrop crops, full float32 labels):"
  echo
  echo "| labels | top-1 agreement | top-5 set agreement | mean KL (nats) | max abs diff | fp32 crops/s | bf16 crops/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  "$py" "$root/bench/label_agreement.py" "$out/full224-off" "$out/full224-bf16" --json |
    "$py" -c 'import json,sys; d=json.load(sys.stdin); print("| full, fp32 values | %.2f%% | %.2f%% | %.2e | %.4f | %s | %s |" % (100*d["top1_agreement"], 100*d["top5_agreement"], d["mean_kl"], d["max_abs_diff"], sys.argv[1], sys.argv[2]))' \
    "$(label_rate "$out/label-full224-off.log")" "$(label_rate "$out/label-full224-bf16.log")"
fi
