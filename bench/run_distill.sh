#!/usr/bin/env bash
# FKD training against plain training and online KD, and FKD's data pipeline alone, beside
# a python3-torch script that does FKD the reference way (bench/fkd_torch.py: one label
# pickle per image, torch.load in DataLoader workers). All in one run on one machine.
#
# Data: Fashion-MNIST as fkd reads it (IDX), the same images as a 28x28 PNG ImageFolder, and
# a 64x64 RGB JPEG ImageFolder copy (bench/make_fmnist_folders.py). Teachers: resnet20 and
# resnet56 (briefly trained: only their compute matters here), frozen and optimized for
# inference in online KD as in labeling. Students: tiny and resnet20. The teachers are
# barely trained, so the students' accuracy here means nothing; see the demo for accuracy.
#
# usage: bench/run_distill.sh [BUILD_DIR] [--images N] [--epochs E] [--num-crops M]
#          [--threads T] [--workers W] [--students "tiny resnet20"] [--all-students] [--quick]
#          [--rounds R] [--datasets "fmnist png28 jpeg64"]
# prints a Markdown table; raw figures go to bench/out/distill/results.jsonl. With --rounds R
# every training run is repeated R times, the modes alternating within each round, and the
# table keeps each one's fastest round (the machine's noise only ever slows a run down).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
images=2000 epochs=4 m=4 threads=2 workers=2 students="tiny resnet20" all_students=0 rounds=1
only="fmnist png28 jpeg64"
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --num-crops) m=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --students) students=$2; shift 2 ;;
    --quick) images=1000 students=tiny; shift ;;
    --all-students) all_students=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --datasets) only=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off
py=/usr/bin/python3
fkd=$build/fkd
out=$root/bench/out/distill
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
common=(--threads "$threads" --workers "$workers" --limit-train "$images" --limit-val 500)

"$py" "$root/bench/make_fmnist_folders.py" "$out/png28" --format png28 --limit-train "$images" \
  --limit-val 500 >&2
"$py" "$root/bench/make_fmnist_folders.py" "$out/jpeg64" --format jpeg64 \
  --limit-train "$images" --limit-val 500 >&2

# name data-spec input-size
datasets=()
for d in "fmnist fashion-mnist 28" "png28 $out/png28 28" "jpeg64 $out/jpeg64 64"; do
  case " $only " in *" ${d%% *} "*) datasets+=("$d") ;; esac
done

# Teachers: one short epoch; speed does not depend on the weights.
for d in "${datasets[@]}"; do
  read -r name data size <<< "$d"
  for t in resnet20 resnet56; do
    [ -f "$out/teacher-$t-$name/checkpoint.pt" ] && continue
    "$fkd" train --model "$t" --data "$data" --input-size "$size" --epochs 1 --limit-train 512 \
      --limit-val 128 --threads "$threads" --out "$out/teacher-$t-$name" > /dev/null
  done
  # Labels: enough crops for every epoch, from the resnet20 teacher.
  "$fkd" label --teacher "$out/teacher-resnet20-$name/checkpoint.pt" --data "$data" \
    --input-size "$size" --limit "$images" --crops "$epochs" --scale 0.35 1 \
    --threads "$threads" --out "$out/labels-$name" > /dev/null
done

# One training run; appends {"data", "student", "mode", "epoch_s", "samples_per_s"}.
train_run() {
  local name=$1 data=$2 size=$3 student=$4 mode=$5
  shift 5
  local dir=$out/run-$name-$student-$mode
  rm -rf "$dir"
  "$fkd" train --model "$student" --data "$data" --input-size "$size" --epochs "$epochs" \
    "${common[@]}" --out "$dir" "$@" > /dev/null
  "$py" - "$dir/metrics.jsonl" "$name" "$student" "$mode" "$epochs" >> "$results" <<'PY'
import json, sys
path, name, student, mode, epochs = sys.argv[1:6]
lines = [json.loads(l) for l in open(path) if l.strip()]
train_s = sum(l["train_seconds"] for l in lines)
samples = sum(l["samples_per_s"] * l["train_seconds"] for l in lines)
print(json.dumps({"kind": "train", "impl": "fkd", "data": name, "student": student, "mode": mode,
                  "epoch_s": train_s / int(epochs), "samples_per_s": samples / train_s,
                  "top1": lines[-1]["top1"]}))
PY
}

for d in "${datasets[@]}"; do
  read -r name data size <<< "$d"
  # The PNG copy only serves the comparison with the python reference (tiny student); the
  # larger student runs on the 64x64 copy only with --all-students (it takes long on a CPU).
  list=$students; [ "$name" = png28 ] && list=tiny
  [ "$name" = jpeg64 ] && [ "$all_students" = 0 ] && list=tiny
  for ((round = 0; round < rounds; ++round)); do
    for s in $list; do
      train_run "$name" "$data" "$size" "$s" plain --mode supervised
      train_run "$name" "$data" "$size" "$s" fkd --labels "$out/labels-$name" --num-crops "$m"
      train_run "$name" "$data" "$size" "$s" kd-resnet20 \
        --teacher "$out/teacher-resnet20-$name/checkpoint.pt"
      train_run "$name" "$data" "$size" "$s" kd-resnet56 \
        --teacher "$out/teacher-resnet56-$name/checkpoint.pt"
    done
  done
  # The data pipeline alone (no model), fkd.
  "$build/bench/bench_core_fkd_pipeline" "$data" "$out/labels-$name" --num-crops "$m" \
    --workers "$workers" --limit "$images" --passes 3 |
    "$py" -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l); r.update(kind="pipeline", impl="fkd", data=sys.argv[1]); print(json.dumps(r))' \
      "$name" >> "$results"
done

# The reference way, in python3-torch, on the image folders.
for name in png28 jpeg64; do
  case " $only " in *" $name "*) ;; *) continue ;; esac
  size=28; [ "$name" = jpeg64 ] && size=64
  "$py" "$root/bench/fkd_torch.py" make-labels "$out/$name" "$out/reflabels-$name" \
    --crops "$epochs" --scale 0.35 1.0 --fp16 >&2
  for mode in pipeline train; do
    flag=(); [ $mode = pipeline ] && flag=(--pipeline-only)
    "$py" "$root/bench/fkd_torch.py" train "$out/$name" "$out/reflabels-$name" --model tiny \
      --num-crops "$m" --epochs "$m" --workers "$workers" --threads "$threads" \
      --input-size "$size" --json "${flag[@]}" 2> /dev/null |
      "$py" -c 'import json,sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps({"kind": "pipeline" if r["mode"] == "pipeline" else "train", "impl": "python",
                  "data": sys.argv[1], "student": "tiny", "mode": "fkd", "pipeline": "fkd",
                  "samples_per_s": r["samples_per_s"]}))' "$name" >> "$results"
  done
done

"$py" - "$results" "$epochs" "$m" "$threads" "$workers" "$images" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
epochs, m, threads, workers, images = sys.argv[2:7]
# Each training run's fastest round.
runs = [r for r in rows if r["kind"] == "train" and r["impl"] == "fkd"]
best = {}
for r in runs:
    key = (r["data"], r["student"], r["mode"])
    best[key] = min(best.get(key, r), r, key=lambda x: x["epoch_s"])
rounds = len(runs) // max(len(best), 1)
rows = [r for r in rows if r not in runs] + list(best.values())
print(f"{images} training images, {epochs} effective epochs, FKD with {m} crops per image per pass, "
      f"{threads} threads, {workers} loader workers, fastest of {rounds} round(s)\n")
print("| data | student | mode | s / epoch | samples/s | epoch time / FKD's |")
print("|---|---|---|---:|---:|---:|")
train = [r for r in rows if r["kind"] == "train" and r["impl"] == "fkd"]
for r in train:
    fkd = next(x for x in train if x["data"] == r["data"] and x["student"] == r["student"] and x["mode"] == "fkd")
    print(f"| {r['data']} | {r['student']} | {r['mode']} | {r['epoch_s']:.2f} | {r['samples_per_s']:.0f} | "
          f"{r['epoch_s'] / fkd['epoch_s']:.2f}x |")
print("\n| data | what | fkd samples/s | python reference samples/s | fkd / python |")
print("|---|---|---:|---:|---:|")
for data in ("fmnist", "png28", "jpeg64"):
    f = next((r for r in rows if r["kind"] == "pipeline" and r["impl"] == "fkd" and r["data"] == data and r["pipeline"] == "fkd"), None)
    p = next((r for r in rows if r["kind"] == "pipeline" and r["impl"] == "python" and r["data"] == data), None)
    if f:
        ref = f"{p['samples_per_s']:.0f}" if p else "-"
        ratio = f"{f['samples_per_s'] / p['samples_per_s']:.1f}x" if p else "-"
        print(f"| {data} | FKD data pipeline alone | {f['samples_per_s']:.0f} | {ref} | {ratio} |")
    ft = next((r for r in train if r["data"] == data and r["student"] == "tiny" and r["mode"] == "fkd"), None)
    pt = next((r for r in rows if r["kind"] == "train" and r["impl"] == "python" and r["data"] == data), None)
    if ft and pt:
        print(f"| {data} | FKD training, tiny | {ft['samples_per_s']:.0f} | {pt['samples_per_s']:.0f} | "
              f"{ft['samples_per_s'] / pt['samples_per_s']:.2f}x |")
PY
