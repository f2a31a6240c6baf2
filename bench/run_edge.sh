#!/usr/bin/env bash
# Edge export of distilled students: float32 and int8 ONNX files checked in onnxruntime.
#
# The demo's setting, scaled as bench/RESULTS.md's "Students at the demo's scale": a resnet20
# teacher trained 2 epochs on 10,000 Fashion-MNIST images labels 8 RandomCrop(28, 4) + flip
# crops of each of them (fkd label); five students learn from those labels by FKD for E
# effective epochs (1 stored crop per image per pass): fkd's tiny, resnet20 and mobilenetv2,
# and torchvision's resnet18 and mobilenet_v3_small (torch.jit.script, first convolution
# adapted to 1 channel). Each is exported with `fkd export --int8 --calibration 512 --labels`
# (calibration crops drawn from the store it learned from) with each range method, and with
# --per-tensor-weights; every file runs on the 10,000 test images in onnxruntime-node
# (tools/edge/ort_eval.js) and in fkd's own evaluator (fkd eval). Writes one JSON line per
# student to bench/out/edge/results.jsonl and prints the table of bench/RESULTS.md.
# Students, teacher and labels are kept in OUT and reused by later runs.
#
# usage: bench/run_edge.sh [BUILD_DIR] [--epochs E] [--images N] [--threads T]
#                          [--calibration N] [--models "tiny resnet20 ..."] [--out DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
epochs=8 images=10000 calibration=512 threads=2 out=$root/bench/out/edge
models="tiny resnet20 mobilenetv2 tv_resnet18 tv_mobilenet_v3_small"
while [ $# -gt 0 ]; do
  case $1 in
    --epochs) epochs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --calibration) calibration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
py=/usr/bin/python3
fkd=$build/fkd
mkdir -p "$out"
ex="--threads $threads --workers 1"

# onnxruntime-node: the test suite's copy, else one of our own.
ort=$build/tests/ort
if [ ! -d "$ort/node_modules/onnxruntime-node" ]; then
  ort=$out/ort
  [ -d "$ort/node_modules/onnxruntime-node" ] ||
    npm install --ignore-scripts --no-audit --no-fund --prefix "$ort" onnxruntime-node > /dev/null
fi
export NODE_PATH=$ort/node_modules

# The teacher and its labels (the demo's first two stages), made once.
if [ ! -f "$out/labels/manifest.json" ]; then
  rm -rf "$out/teacher" "$out/labels"
  "$fkd" train --model resnet20 --limit-train "$images" --limit-val 2000 --epochs 2 $ex \
    --out "$out/teacher" > "$out/teacher.log"
  "$fkd" label --teacher "$out/teacher/checkpoint.pt" --limit "$images" --crops 8 --aug crop $ex \
    --out "$out/labels" > "$out/label.log"
fi
echo "teacher: $(tail -n 1 "$out/teacher/metrics.jsonl")" >&2

# The test images once, as the models take them.
[ -f "$out/teacher/test.f32" ] ||
  "$fkd" eval "$out/teacher/checkpoint.pt" $ex --save-inputs "$out/teacher/test.f32" > /dev/null

ort_eval() { node "$root/tools/edge/ort_eval.js" "$@"; }
json() { "$py" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
size_kb() { echo $(( ($(stat -c %s "$1") + 512) / 1024 )); }

results=$out/results.jsonl
: > "$results"
for name in $models; do
  dir=$out/$name
  model=$name
  case $name in
    tv_*)
      model=$out/$name.pt
      [ -f "$model" ] ||
        "$py" "$root/tests/py/models_script_student.py" make "$model" "${name#tv_}" 1 10 > /dev/null
      ;;
  esac
  if [ ! -f "$dir/checkpoint.pt" ]; then
    "$fkd" train --model "$model" --labels "$out/labels" --epochs "$epochs" --num-crops 1 \
      --limit-val 2000 --seed 0 $ex --out "$dir" > "$dir.log"
  fi
  ck=$dir/checkpoint.pt
  # fkd's own float logits of the 10,000 test images: the reference onnxruntime must give.
  "$fkd" eval "$ck" $ex --save-logits "$dir/ref.f32" > "$dir/eval.log"
  fp32_top1=$(grep -o 'top1 [0-9.]*' "$dir/eval.log" | cut -d' ' -f2)

  declare -A secs=()
  for variant in percentile minmax per-tensor per-tensor-percentile; do
    flags="--int8 --calibration $calibration --labels $out/labels"
    case $variant in
      percentile) flags="$flags --calibration-method percentile" ;;
      minmax) flags="$flags --calibration-method minmax" ;;
      per-tensor) flags="$flags --per-tensor-weights --calibration-method minmax" ;;
      per-tensor-percentile) flags="$flags --per-tensor-weights --calibration-method percentile" ;;
    esac
    t0=$(date +%s.%N)
    "$fkd" export "$ck" "$dir/$variant.onnx" $flags $ex > "$dir/export-$variant.log"
    secs[$variant]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  done
  t0=$(date +%s.%N)
  "$fkd" export "$ck" "$dir/float.onnx" $ex > "$dir/export-float.log"
  float_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')

  test=$out/teacher/test.f32
  f=$(ort_eval "$dir/float.onnx" "$test" --compare "$dir/ref.f32")
  declare -A top=()
  for variant in percentile minmax per-tensor per-tensor-percentile; do
    e=$("$fkd" eval "$dir/$variant.int8.onnx" $ex --save-logits "$dir/$variant.fkd.f32")
    top[$variant-fkd]=$(echo "$e" | grep -o 'top1 [0-9.]*' | cut -d' ' -f2)
    r=$(ort_eval "$dir/$variant.int8.onnx" "$test" --compare "$dir/$variant.fkd.f32" \
          --logits "$dir/$variant.ort.f32")
    top[$variant]=$(json "$r" top1)
    top[$variant-agree]=$(json "$r" argmax_agreement)
  done
  fkd_int8=${top[percentile-fkd]} fkd_int8_minmax=${top[minmax-fkd]}
  "$py" - "$name" >> "$results" <<PY
import json, sys
print(json.dumps({
  "model": sys.argv[1], "fkd_fp32_top1": float("$fp32_top1"),
  "ort_fp32_top1": $(json "$f" top1), "ort_fp32_max_rel_diff": $(json "$f" max_relative_diff),
  "ort_fp32_argmax_agreement": $(json "$f" argmax_agreement),
  "ort_int8_percentile_top1": ${top[percentile]}, "ort_int8_minmax_top1": ${top[minmax]},
  "ort_int8_per_tensor_top1": ${top[per-tensor]},
  "ort_int8_per_tensor_percentile_top1": ${top[per-tensor-percentile]},
  "fkd_int8_percentile_top1": float("$fkd_int8"), "fkd_int8_minmax_top1": float("$fkd_int8_minmax"),
  "int8_argmax_agreement_percentile": ${top[percentile-agree]},
  "int8_argmax_agreement_minmax": ${top[minmax-agree]},
  "int8_argmax_agreement_per_tensor": ${top[per-tensor-agree]},
  "fp32_kb": $(size_kb "$dir/float.onnx"), "int8_kb": $(size_kb "$dir/minmax.int8.onnx"),
  "calibration": $calibration, "export_float_s": $float_s,
  "export_int8_s": ${secs[percentile]}, "export_int8_minmax_s": ${secs[minmax]}}))
PY
  unset secs top
  tail -n 1 "$results" >&2
done

echo "| model | fp32 top-1 (fkd / ORT) | ORT max rel. diff | int8 ORT MinMax | int8 ORT percentile | int8 ORT per-tensor weights (MinMax / pct.) | fkd int8 = ORT argmax (MinMax / pct. / per-tensor) | fkd int8 top-1 (MinMax / pct.) | fp32 KiB | int8 KiB | calibration | export s (float / int8 pct. / int8 MinMax) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
"$py" - "$results" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"| {r['model']} | {r['fkd_fp32_top1']:.2f} / {r['ort_fp32_top1']:.2f} | "
          f"{r['ort_fp32_max_rel_diff']:.1e} | {r['ort_int8_minmax_top1']:.2f} | "
          f"{r['ort_int8_percentile_top1']:.2f} | {r['ort_int8_per_tensor_top1']:.2f} / "
          f"{r['ort_int8_per_tensor_percentile_top1']:.2f} | "
          f"{r['int8_argmax_agreement_minmax']:.2f}% / {r['int8_argmax_agreement_percentile']:.2f}% / "
          f"{r['int8_argmax_agreement_per_tensor']:.2f}% | "
          f"{r['fkd_int8_minmax_top1']:.2f} / {r['fkd_int8_percentile_top1']:.2f} | "
          f"{r['fp32_kb']} | {r['int8_kb']} | {r['calibration']} | "
          f"{r['export_float_s']} / {r['export_int8_s']} / {r['export_int8_minmax_s']} |")
PY
