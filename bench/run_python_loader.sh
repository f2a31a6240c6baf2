#!/usr/bin/env bash
# The Python module's FKD loader (fkd.Loader) against the reference's FKD data pipeline (a torch
# DataLoader over bench/fkd_torch.py's FKDFolder: torch.load of each image's label file, m of
# its crops replayed with torchvision's resized_crop + hflip, to_tensor, normalize, soft labels
# recovered), on the same stored crops and labels: fkd's store, exported to the reference's
# per-image files through the module (bench/python_loader.py export). Both sides load only
# (no model), with the same crops per image, batch, input size and loader workers, each pinned
# with taskset to as many cores as it has workers (the consuming main thread shares them), so
# samples/s per core = samples/s / workers. Both run with fkd's glibc malloc settings
# (GLIBC_TUNABLES, bench/malloc_tunables.py) and OMP_WAIT_POLICY=passive.
#
# usage: bench/run_python_loader.sh [BUILD_DIR] [--images N] [--fmnist-images N]
#          [--workers "1 2"] [--num-crops m] [--passes P]
# Data: N (default 200) 500x375 JPEGs of bench/make_jpegs.py in 10 class folders, labeled and
# loaded at 224 px; the first N (default 4000) Fashion-MNIST training images as 28x28 PNGs
# (bench/make_fmnist_folders.py), at 28 px. Labels: `fkd label --aug rrc --crops 8` with a
# small random-weight TorchScript teacher (only speed is measured). Writes
# bench/out/python-loader/results.jsonl; prints a Markdown table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
images=200 fimages=4000 workers="1 2" m=4 passes=2
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --fmnist-images) fimages=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --num-crops) m=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive FKD_PROGRESS=off PYTHONPATH=$build/python
py=/usr/bin/python3
out=$root/bench/out/python-loader
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
. "$root/bench/jpegs.sh"
ensure_jpegs "$root" "$root/bench/out"

# The JPEG ImageFolder: image k in class k % 10.
jpeg=$out/jpeg
jpeg_image_folder "$root" "$jpeg" "$images"
fmnist=$out/fmnist
"$py" "$root/bench/make_fmnist_folders.py" "$fmnist" --format png28 --limit-train "$fimages" \
  --limit-val 100 > /dev/null

# Teachers with random weights, and fkd's labels of each tree.
make_teacher() {  # OUT CHANNELS SIZE
  "$py" - "$@" <<'PY'
import sys, torch
out, channels, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(channels, 16, 7, 4, 3), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(16, 10)).eval()
torch.jit.trace(model, torch.randn(1, channels, size, size)).save(out)
PY
}
label() {  # NAME DATA CHANNELS SIZE
  make_teacher "$out/teacher-$1.pt" "$3" "$4"
  rm -rf "$out/labels-$1" "$out/reflabels-$1"
  "$build/fkd" label --teacher "$out/teacher-$1.pt" --data "$2" --out "$out/labels-$1" \
    --crops 8 --aug rrc --input-size "$4" --channels "$3" --batch 128 --threads 2 --workers 2 \
    > /dev/null
  "$py" "$root/bench/python_loader.py" export "$out/labels-$1" "$2" "$out/reflabels-$1" > /dev/null
}
label jpeg "$jpeg" 3 224
label fmnist "$fmnist" 1 28

run() {  # NAME DATA CHANNELS SIZE BATCH
  local name=$1 data=$2 channels=$3 size=$4 batch=$5 w cores epochs
  epochs=$(((passes + 1) * m))
  for w in $workers; do
    cores=0-$((w - 1))
    taskset -c "$cores" "$py" "$root/bench/python_loader.py" time "$data" "$out/labels-$name" \
      --num-crops "$m" --batch-size "$batch" --workers "$w" --input-size "$size" \
      --channels "$channels" --passes "$passes" --json |
      "$py" -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
r.update(data=sys.argv[1], cores=int(sys.argv[2]))
print(json.dumps(r))' "$name" "$w" >> "$results"
    taskset -c "$cores" "$py" "$root/bench/fkd_torch.py" train "$data" "$out/reflabels-$name" \
      --pipeline-only --num-crops "$m" --batch-size "$batch" --workers "$w" --threads 1 \
      --input-size "$size" --epochs "$epochs" --json 2> "$out/torch-$name-w$w.log" |
      "$py" -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
r.update(impl="torch-dataloader", data=sys.argv[1], cores=int(sys.argv[2]))
print(json.dumps(r))' "$name" "$w" >> "$results"
  done
}
run jpeg "$jpeg" 3 224 64
run fmnist "$fmnist" 1 28 256

"$py" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| data | workers = cores | fkd.Loader samples/s | per core | torch DataLoader samples/s "
      "| per core | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for data in ("jpeg", "fmnist"):
    for cores in sorted({r["cores"] for r in rows if r["data"] == data}):
        f = [r for r in rows if r["data"] == data and r["cores"] == cores and
             r["impl"] == "fkd-python"][0]
        t = [r for r in rows if r["data"] == data and r["cores"] == cores and
             r["impl"] == "torch-dataloader"][0]
        print("| %s | %d | %.0f | %.0f | %.0f | %.0f | %.1fx |" % (
            "500x375 JPEG, 224 px" if data == "jpeg" else "Fashion-MNIST PNG, 28 px", cores,
            f["samples_per_s"], f["samples_per_s"] / cores, t["samples_per_s"],
            t["samples_per_s"] / cores, f["samples_per_s"] / t["samples_per_s"]))
PY
