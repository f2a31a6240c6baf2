#!/usr/bin/env bash
# fkd on a CUDA GPU (fkd built against a CUDA LibTorch, see the README): the device path of
# each subcommand, the supervised default recipe on several seeds at once, and the tiny
# student's epoch time in plain, FKD and online-KD training on the GPU. With --scale, also
# the 224-px table: resnet18/resnet50 students, plain, FKD m = 1, 2, 4 and online KD, with
# and without --amp bf16, and the GPU's utilization against the loader's CPU workers.
#
# usage: bench/run_gpu.sh FKD_BINARY DATA OUT_DIR [--seeds "0 1 2"] [--images N]
#          [--epochs E] [--speed-epochs E] [--device cuda:N] [--variant "NAME|FLAGS"]...
#          [--scale JPEG_DIR] [--scale-only] [--scale-images N] [--scale-workers "4 8 16"]
#   --scale JPEG_DIR: a folder of ImageNet-like JPEGs (bench/make_jpegs.py's 500x375 ones);
#   an ImageFolder of --scale-images links to them (100 classes) is made in OUT_DIR, and a
#   resnet50 teacher is trained by fkd for one short epoch (only its speed matters).
#   --scale-only skips parts 1-4.
#   --variant adds a recipe variant (extra `fkd train` flags) run on every seed beside the
#   default recipe; --variant "default|" alone keeps only the default.
#   DATA: fashion-mnist or a folder with the Fashion-MNIST IDX files.
#   Writes OUT_DIR/summary.md and one folder per run.
set -euo pipefail
fkd=$1 data=$2 out=$3
shift 3
seeds="0 1 2" images=20000 epochs=15 speed_epochs=4 device=cuda variants=()
scale="" scale_only=0 scale_images=5000 scale_workers="4 8 16"
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --speed-epochs) speed_epochs=$2; shift 2 ;;
    --variant) variants+=("$2"); shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    --scale-only) scale_only=1; shift ;;
    --scale-images) scale_images=$2; shift 2 ;;
    --scale-workers) scale_workers=$2; shift 2 ;;
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

# 5. (--scale) 224-px crops of JPEGs: teacher, labels, students, and how many CPU workers keep
# the GPU busy. GPU utilization is sampled by nvidia-smi every 200 ms during each run; the
# mean over its second half (the first half holds start-up, the first pass and evaluation).
gpu_util_during() {  # gpu_util_during LOG CMD...: runs CMD, prints the mean utilization
  local log=$1; shift
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$log.util" &
  local smi=$!
  "$@" > "$log" 2>&1 || { kill $smi; echo "failed: $log" >&2; tail -3 "$log" >&2; return 1; }
  kill $smi; wait $smi 2>/dev/null || true
  awk '{v[NR] = $1} END {s = 0; n = 0; for (i = int(NR / 2) + 1; i <= NR; ++i) {s += v[i]; n++}
       printf "%.0f", n ? s / n : 0}' "$log.util"
}
second_pass_rate() { tail -n 1 "$1/metrics.jsonl" | grep -o '"samples_per_s":[0-9.]*' | cut -d: -f2 | xargs printf "%.0f"; }
run_scale() {
  local sd=$out/scale-data classes=100 k c f
  for ((k = 0; k < scale_images; ++k)); do
    c=$(printf 'c%03d' $((k % classes)))
    mkdir -p "$sd/train/$c" "$sd/val/$c"
    f=$(ls "$scale" | sed -n "$((k % $(ls "$scale" | wc -l) + 1))p")
    ln -s "$(cd "$scale" && pwd)/$f" "$sd/train/$c/$(printf 'img_%05d.jpg' "$k")"
    [ -e "$sd/val/$c/val.jpg" ] || ln -s "$(cd "$scale" && pwd)/$f" "$sd/val/$c/val.jpg"
  done
  "$fkd" train --model resnet50 --data "$sd" --input-size 224 --aug rrc --epochs 1 \
    --limit-train 512 "${dev[@]}" --amp bf16 --workers 8 --out "$out/scale-teacher" \
    > "$out/scale-teacher.log" 2>&1
  local t=$out/scale-teacher/checkpoint.pt
  {
    echo
    echo "224 px, $scale_images JPEGs (100 classes); teacher resnet50 (fkd checkpoint, 1 short epoch)"
    for amp in off bf16; do
      "$fkd" label --teacher "$t" --data "$sd" --crops 8 --input-size 224 --batch 512 \
        --workers 16 --threads 4 "${dev[@]}" --amp "$amp" --out "$out/scale-labels-$amp" | tail -n 1
    done
    echo
    echo "| student | amp | mode | workers | samples/s (2nd pass) | GPU util % | data wait s |"
    echo "|---|---|---|---:|---:|---:|---:|"
  } >> "$summary"
  local student amp mode w run args m
  for student in resnet18 resnet50; do
    for amp in off bf16; do
      for mode in plain fkd1 fkd2 fkd4 kd; do
        for w in $scale_workers; do
          # The workers sweep only where it is asked: resnet50 bf16, plain and FKD m = 4.
          [ "$w" != "${scale_workers##* }" ] && ! { [ $student = resnet50 ] && [ $amp = bf16 ] &&
            { [ $mode = plain ] || [ $mode = fkd4 ]; }; } && continue
          run=$out/scale-$student-$amp-$mode-w$w
          args=(train --model "$student" --data "$sd" --input-size 224 --batch-size 256
            --threads 4 --workers "$w" "${dev[@]}" --amp "$amp" --limit-val 100 --out "$run")
          case $mode in
            plain) args+=(--aug rrc --epochs 2) ;;
            fkd*) m=${mode#fkd}; args+=(--labels "$out/scale-labels-off" --num-crops "$m" --epochs $((2 * m))) ;;
            kd) args+=(--teacher "$t" --aug rrc --epochs 2) ;;
          esac
          util=$(gpu_util_during "$run.log" "$fkd" "${args[@]}") || continue
          wait_s=$(tail -n 1 "$run/metrics.jsonl" | grep -o '"data_seconds":[0-9.]*' | cut -d: -f2)
          echo "| $student | $amp | $mode | $w | $(second_pass_rate "$run") | $util | $wait_s |" >> "$summary"
        done
      done
    done
  done
}
if [ -n "$scale" ]; then run_scale; fi
if [ "$scale_only" = 1 ]; then cat "$summary"; exit 0; fi

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
