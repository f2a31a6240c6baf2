# Sourced by the scripts that time decoding: the 200 generated JPEGs of each size in OUT
# (bench/make_jpegs.py, 500x375 and 224x224), made once.
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
