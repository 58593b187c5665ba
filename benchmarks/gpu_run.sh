#!/usr/bin/env bash
# The one device call that runs benchmarks/gpu_check.py on a lent GPU machine (no package index there).
#
# Prepared here first (the wheels travel with the working tree, ≤ 64 MiB a call; see the device tool):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       onnxruntime-gpu==1.31.1 -d .whl-ort && ../shared/tools/parts split .whl-ort/onnxruntime_gpu-*.whl .relay
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       "transformers==4.57.6" "tokenizers==0.22.*" "huggingface-hub<1" "peft==0.21.*" "optimum==2.1.*" \
#       "optimum-onnx==0.1.0" safetensors accelerate -d .whl
# Calls 1-4 carry one part each (`mkdir -p /tmp/relay && cp .relay/* /tmp/relay/`), back to back;
# this script runs in call 5, which carries the last part, the sha256 file and .whl:
#   bash benchmarks/gpu_run.sh [OUT]        (OUT defaults to $OUT, the folder whose files come back)
set -euo pipefail
out="${1:-${OUT:?give the output folder}}"
mkdir -p /tmp/relay "$out"
cp .relay/* /tmp/relay/ 2>/dev/null || true
# The manifest names the wheel; joined under that name, pip accepts it.
name=$(awk '{print $2}' /tmp/relay/*.sha256)
cat /tmp/relay/"$name".part* > "/tmp/$name"
expected=$(awk '{print $1}' /tmp/relay/*.sha256)
actual=$(sha256sum "/tmp/$name" | awk '{print $1}')
[ "$expected" = "$actual" ] || { echo "$name: sha256 $actual, expected $expected (a part missing?)" >&2; exit 1; }
python3 -m pip install --quiet --no-deps --no-index --target /tmp/site "/tmp/$name" .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD:$PWD/.gpu-links"
mkdir -p .gpu-links && ln -sfn "$PWD/exporters" .gpu-links/rankdyna_exporters
python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
timeout 480 python3 benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
