#!/usr/bin/env bash
# fkd's label store beside the reference layout (one torch.save file per image), on the same
# synthetic teacher-like labels: size per crop and random-access read speed, of stores with
# derived crops and with explicit crop boxes (an imported store).
# Builds nothing: build bench_core_store first, e.g.
#   cmake --build build --target bench_core_store
#
# usage: bench/run_store.sh [BUILD_DIR] [--passes 3] [--images 200] [--crops 500] [--k 5]
#                           [--classes "10 1000"]
#   Writes into bench/out/store/. Prints three Markdown tables. Sizes are whole files (shard
#   files + manifest excluded / the reference's .tar files) over crops; reads are
#   page-cached files, one thread, per CPU-second of that thread, best of several rounds
#   (see bench/bench_core_store.cpp and bench/store_reference.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then build=$1; shift; fi
images=200 crops=500 k=5 classes="10 1000" passes=3
while [ $# -gt 0 ]; do
  case $1 in
    --passes) passes=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --crops) crops=$2; shift 2 ;;
    --k) k=$2; shift 2 ;;
    --classes) classes=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bin=$build/bench/bench_core_store
python=/usr/bin/python3
out=$root/bench/out/store
[ -x "$bin" ] || { echo "no $bin: build the bench_core_store target first" >&2; exit 1; }
mkdir -p "$out"

declare -A R
keep_max() { R[$1]=$(awk -v a="${R[$1]:-0}" -v b="$2" 'BEGIN { print (b > a) ? b : a }'); }
for c in $classes; do
  dir=$out/c$c
  mkdir -p "$dir"
  echo "classes $c: writing ..." >&2
  while read -r tag prec bpc rate; do R[$c,fkd,$prec,bytes]=$bpc; R[$c,fkd,$prec,write]=$rate; done < <(
    "$bin" write "$dir" --classes "$c" --images "$images" --crops "$crops" --k "$k" --dump "$dir/labels.bin")
  # The reads alternate between fkd and the reference for --passes passes; each keeps its
  # fastest, so a burst of load from outside hits one pass of one side, not the ratio.
  for pass in $(seq "$passes"); do
    echo "classes $c: pass $pass of $passes: reading fkd ..." >&2
    for prec in fp16 u8 fp16-v1 fp16-explicit; do
      while read -r tag a b; do
        [ "$tag" = read ] && { keep_max "$c,fkd,$prec,rps" "$a"; keep_max "$c,fkd,$prec,cps" "$b"; }
        [ "$tag" = derive ] && R[$c,derive]=$a
      done < <("$bin" read "$dir/$prec")
    done
    echo "classes $c: pass $pass of $passes: reference ..." >&2
    while read -r tag prec bpc rps cps; do
      R[$c,ref,$prec,bytes]=$bpc
      keep_max "$c,ref,$prec,rps" "$rps"
      keep_max "$c,ref,$prec,cps" "$cps"
    done < <("$python" "$root/bench/store_reference.py" "$dir/labels.bin" "$dir" --classes "$c" \
               --images "$images" --crops "$crops" --k "$k")
  done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo
echo "Bytes per crop, marginal_smoothing top-$k, $images images x $crops crops (coordinates included)"
echo
echo "| classes | fkd fp16 | fkd u8 | fkd fp16, version 1 (zstd) | reference fp16 | reference fp32 | reference fp16 / fkd fp16 | reference fp16 / fkd u8 |"
echo "|---|---|---|---|---|---|---|---|"
for c in $classes; do
  echo "| $c | ${R[$c,fkd,fp16,bytes]} | ${R[$c,fkd,u8,bytes]} | ${R[$c,fkd,fp16-v1,bytes]} | ${R[$c,ref,fp16,bytes]} | ${R[$c,ref,fp32,bytes]} | $(ratio "${R[$c,ref,fp16,bytes]}" "${R[$c,fkd,fp16,bytes]}") | $(ratio "${R[$c,ref,fp16,bytes]}" "${R[$c,fkd,u8,bytes]}") |"
done
echo
echo "Random-access reads: records (images) per second, one record = all $crops crops' indices and values"
echo
echo "| classes | fkd fp16 | fkd u8 | fkd fp16, version 1 (zstd) | torch.load reference fp16 | torch.load reference fp32 | fkd fp16 / ref fp16 | fkd fp16 / ref fp32 | fkd u8 / ref fp16 | fkd fp16 / version 1 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for c in $classes; do
  echo "| $c | ${R[$c,fkd,fp16,rps]} | ${R[$c,fkd,u8,rps]} | ${R[$c,fkd,fp16-v1,rps]} | ${R[$c,ref,fp16,rps]} | ${R[$c,ref,fp32,rps]} | $(ratio "${R[$c,fkd,fp16,rps]}" "${R[$c,ref,fp16,rps]}") | $(ratio "${R[$c,fkd,fp16,rps]}" "${R[$c,ref,fp32,rps]}") | $(ratio "${R[$c,fkd,u8,rps]}" "${R[$c,ref,fp16,rps]}") | $(ratio "${R[$c,fkd,fp16,rps]}" "${R[$c,fkd,fp16-v1,rps]}") |"
done
echo
echo "Explicit crop boxes (what an import of the reference's files writes): the same crops stored as pixel boxes of the 500x375 images, fp16"
echo
echo "| classes | bytes/crop derived | bytes/crop explicit | boxes (bytes/crop) | reads/s derived | reads/s explicit | explicit / derived reads |"
echo "|---|---|---|---|---|---|---|"
for c in $classes; do
  echo "| $c | ${R[$c,fkd,fp16,bytes]} | ${R[$c,fkd,fp16-explicit,bytes]} | $(awk -v a="${R[$c,fkd,fp16-explicit,bytes]}" -v b="${R[$c,fkd,fp16,bytes]}" 'BEGIN { printf "%.3f", a - b }') | ${R[$c,fkd,fp16,rps]} | ${R[$c,fkd,fp16-explicit,rps]} | $(ratio "${R[$c,fkd,fp16-explicit,rps]}" "${R[$c,fkd,fp16,rps]}") |"
done
echo
for c in $classes; do
  echo "classes $c: fkd writer (quantized labels -> packed record + write) ${R[$c,fkd,fp16,write]} records/s fp16, ${R[$c,fkd,u8,write]} u8; deriving one crop's box and flip ${R[$c,derive]} us"
done
