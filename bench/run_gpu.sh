#!/usr/bin/env bash
# fkd on a CUDA GPU (fkd built against a CUDA LibTorch, see the README): the device path of
# each subcommand, the supervised default recipe on several seeds at once, and the tiny
# student's epoch time in plain, FKD and online-KD training on the GPU.
#
# usage: bench/run_gpu.sh FKD_BINARY DATA OUT_DIR [--seeds "0 1 2"] [--images N]
#          [--epochs E] [--speed-epochs E] [--device cuda:N] [--variant "NAME|FLAGS"]...
#   --variant adds a recipe variant (extra `fkd train` flags) run on every seed beside the
#   default recipe; --variant "default|" alone keeps only the default.
#   DATA: fashion-mnist or a folder with the Fashion-MNIST IDX files.
#   Writes OUT_DIR/summary.md and one folder per run.
set -euo pipefail
fkd=$1 data=$2 out=$3
shift 3
seeds="0 1 2" images=20000 epochs=15 speed_epochs=4 device=cuda variants=()
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --speed-epochs) speed_epochs=$2; shift 2 ;;
    --variant) variants+=("$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export FKD_PROGRESS=off
[ -e "$out" ] && { echo "$out exists: choose a new OUT_DIR" >&2; exit 2; }
mkdir -p "$out"
summary=$out/summary.md
: > "$summary"
dev=(--device "$device")

epoch_s() {  # mean training seconds per effective epoch of a run's metrics.jsonl
  awk -F'"train_seconds":' '{split($2, a, /[,}]/); s += a[1]} END {printf "%.2f", s / n}' \
    n="$2" "$1/metrics.jsonl"
}
last_top1() { tail -n 1 "$1/metrics.jsonl" | grep -o '"top1":[0-9.]*' | cut -d: -f2 | xargs printf "%.2f"; }

# 1. Teachers and labels on the GPU (one short epoch: only their compute matters here).
for t in resnet20 resnet56; do
  "$fkd" train --model "$t" --data "$data" --epochs 1 --limit-train 2048 --limit-val 512 \
    "${dev[@]}" --out "$out/teacher-$t" > "$out/teacher-$t.log"
done
"$fkd" label --teacher "$out/teacher-resnet20/checkpoint.pt" --data "$data" --limit "$images" \
  --crops "$speed_epochs" --aug crop "${dev[@]}" --batch 1024 --out "$out/labels" | tail -n 1 | tee "$out/label.log"

[ ${#variants[@]} -eq 0 ] && variants=("default|")

# 2. The tiny student: plain, FKD (4 crops per image per pass) and online KD.
common=(--model tiny --data "$data" --epochs "$speed_epochs" --limit-train "$images" --limit-val 2000
        --workers 4 --threads 4 "${dev[@]}")
{
  echo "| student | mode | s / epoch | epoch time / FKD's |"
  echo "|---|---|---:|---:|"
} >> "$summary"
declare -A S
for mode in plain fkd kd-resnet20 kd-resnet56; do
  case $mode in
    plain) extra=(--mode supervised) ;;
    fkd) extra=(--labels "$out/labels" --num-crops 4) ;;
    kd-*) extra=(--teacher "$out/teacher-${mode#kd-}/checkpoint.pt") ;;
  esac
  "$fkd" train "${common[@]}" "${extra[@]}" --out "$out/tiny-$mode" > "$out/tiny-$mode.log"
  S[$mode]=$(epoch_s "$out/tiny-$mode" "$speed_epochs")
done
for mode in plain fkd kd-resnet20 kd-resnet56; do
  echo "| tiny | $mode | ${S[$mode]} | $(awk "BEGIN {printf \"%.2fx\", ${S[$mode]} / ${S[fkd]}}") |" \
    >> "$summary"
done

# 3. The documented supervised recipe, resnet20, 15 epochs (--epochs), several seeds side by side.
for v in "${variants[@]}"; do
  for s in $seeds; do
    # shellcheck disable=SC2086  # the variant's flags split on spaces
    "$fkd" train --model resnet20 --data "$data" --epochs "$epochs" --seed "$s" --workers 3 \
      --threads 2 "${dev[@]}" ${v#*|} --out "$out/resnet20-${v%%|*}-seed$s" \
      > "$out/resnet20-${v%%|*}-seed$s.log" &
  done
done
wait
{
  echo
  echo "| resnet20, $epochs epochs | flags | $(printf 'seed %s | ' $seeds)"
  echo "|---|---|$(printf -- '---:|%.0s' $seeds)"
  for v in "${variants[@]}"; do
    row="| ${v%%|*} | ${v#*|} |"
    for s in $seeds; do row+=" $(last_top1 "$out/resnet20-${v%%|*}-seed$s")% |"; done
    echo "$row"
  done
} >> "$summary"

# 4. Data-parallel FKD on NCCL, one GPU per rank (`--device cuda` is the GPU of LOCAL_RANK):
# needs 2 GPUs or more, since NCCL refuses two ranks on one GPU.
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
{
  echo
  if [ "$gpus" -ge 2 ]; then
    "$fkd" launch --nproc-per-node 2 -- train --model tiny --data "$data" --epochs "$speed_epochs" \
      --limit-train "$images" --limit-val 2000 --workers 4 --threads 4 --device cuda \
      --labels "$out/labels" --num-crops 4 --out "$out/tiny-fkd-nccl" > "$out/tiny-fkd-nccl.log" 2>&1
    echo "FKD, 2 ranks on NCCL: $(last_top1 "$out/tiny-fkd-nccl")% top-1 (1 rank: $(last_top1 "$out/tiny-fkd")%)"
  else
    echo "Data-parallel FKD on NCCL: not run ($gpus GPU visible; NCCL needs one GPU per rank)"
  fi
} >> "$summary"
cat "$summary"
