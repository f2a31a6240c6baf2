# Sourced by the scripts that time decoding: the 200 generated JPEGs of each size in OUT
# (bench/make_jpegs.py, 500x375 and 224x224), made once, and an ImageFolder of them.
# usage: ensure_jpegs ROOT OUT
ensure_jpegs() {
  local s
  for s in 500x375 224x224; do
    if [ "$(ls "$2/$s" 2>/dev/null | wc -l)" -lt 200 ]; then
      echo "making JPEGs in $2 ..." >&2
      /usr/bin/python3 "$1/bench/make_jpegs.py" "$2" --count 200 --seed 0
      return
    fi
  done
}

# An ImageFolder DIR of N links to the 500x375 JPEGs of ensure_jpegs (made by it in
# ROOT/bench/out): image k in class folder c(k % CLASSES) (default 10 classes), one val image
# per class. Kept when it already holds N training images in CLASSES class folders.
# usage: jpeg_image_folder ROOT DIR N [CLASSES]
jpeg_image_folder() {
  local root=$1 dir=$2 n=$3 classes=${4:-10} k c f
  [ "$(find "$dir/train" -name '*.jpg' 2>/dev/null | wc -l)" = "$n" ] &&
    [ "$(ls "$dir/train" | wc -l)" = "$((n < classes ? n : classes))" ] && return
  rm -rf "$dir"
  for ((k = 0; k < n; ++k)); do
    c=c$((k % classes))
    mkdir -p "$dir/train/$c" "$dir/val/$c"
    f=$(printf '%s/bench/out/500x375/img_%04d.jpg' "$root" $((k % 200)))
    ln -s "$f" "$dir/train/$c/$(printf 'img_%04d.jpg' "$k")"
    [ -e "$dir/val/$c/val.jpg" ] || ln -s "$f" "$dir/val/$c/val.jpg"
  done
}
