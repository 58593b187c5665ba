#!/usr/bin/env bash
# Runs benchmarks/gpu_check.py on a lent GPU machine, which has no package index: the onnxruntime-gpu
# wheel (256 MB) and transformers 4.57 with its friends travel with the working tree, ≤ 64 MiB a call.
#
#   bash benchmarks/gpu_run.sh prepare      # here: download the wheels, split, print the device calls
#   bash benchmarks/gpu_run.sh run [OUT]    # there, in the last call (OUT defaults to $OUT)
#
# The working tree travels with every call too, so the parts are sized to what it leaves of 64 MiB
# (with 2 MiB to spare); each call but the last carries one part, back to back (/tmp lasts only
# while the machine stays warm), and the last carries the sha256 file and .whl and runs this script.
set -euo pipefail

LIMIT_MIB=64 SPARE_MIB=2
# pip matches a manylinux tag exactly: tokenizers and safetensors are manylinux_2_17 wheels.
PLATFORMS=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# transformers 5.x is installed there; peft-rankdyna needs 4.57 (optimum-onnx 0.1.0 needs < 4.58).
FRIENDS=("transformers==4.57.6" "tokenizers==0.22.*" "huggingface-hub<1" "peft==0.21.*" "optimum==2.1.*"
         "optimum-onnx==0.1.0" "safetensors==0.8.*" "accelerate==1.15.*")

prepare() {
  grep -qx '/.relay/' .git/info/exclude 2>/dev/null || printf '/.relay/\n/.whl-ort/\n/.whl/\n' >> .git/info/exclude
  [ -n "$(ls .whl-ort/onnxruntime_gpu-*.whl 2>/dev/null)" ] ||
    python3 -m pip download "${PLATFORMS[@]}" onnxruntime-gpu==1.31.1 -d .whl-ort
  python3 -m pip download "${PLATFORMS[@]}" "${FRIENDS[@]}" -d .whl
  local tree_bytes tree_mib part_mib
  tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- | tail -1 | cut -f1)
  tree_mib=$(( (tree_bytes + 1048575) / 1048576 ))
  part_mib=$(( LIMIT_MIB - SPARE_MIB - tree_mib ))
  rm -rf .relay
  ../shared/tools/parts split .whl-ort/onnxruntime_gpu-*.whl .relay "$part_mib"
  echo "working tree $tree_mib MiB, parts of $part_mib MiB, .whl $(du -sm .whl | cut -f1) MiB; the device calls:"
  local call=1 part
  for part in .relay/*.part*; do
    echo "  call $call: carry [\"$part\"]  command: mkdir -p /tmp/relay && cp .relay/* /tmp/relay/"
    call=$(( call + 1 ))
  done
  echo "  call $call: carry [\"$(ls .relay/*.sha256)\", \".whl\"]  command: bash benchmarks/gpu_run.sh run"
}

run() {
  local out="${1:-${OUT:?give the output folder}}" name expected actual
  mkdir -p /tmp/relay "$out"
  cp .relay/* /tmp/relay/
  # The manifest names the wheel; joined under that name, pip accepts it.
  name=$(awk '{print $2}' /tmp/relay/*.sha256)
  cat /tmp/relay/"$name".part* > "/tmp/$name"
  expected=$(awk '{print $1}' /tmp/relay/*.sha256)
  actual=$(sha256sum "/tmp/$name" | awk '{print $1}')
  [ "$expected" = "$actual" ] || { echo "$name: sha256 $actual, expected $expected (a part missing?)" >&2; exit 1; }
  python3 -m pip install --quiet --no-deps --no-index --no-compile --target /tmp/site "/tmp/$name" .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD:$PWD/.gpu-links"
  mkdir -p .gpu-links && ln -sfn "$PWD/exporters" .gpu-links/rankdyna_exporters
  python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
  timeout 480 python3 benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash benchmarks/gpu_run.sh prepare | run [OUT]" >&2; exit 2 ;;
esac
