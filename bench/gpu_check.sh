#!/usr/bin/env bash
# The GPU checks, as one script for a GPU machine (python3 there must have torch, torchvision,
# Pillow, pytest, matplotlib): the AMP training tests (one short run per precision), then the
# fine-tuning throughput bench with AMP at 224 px, CPU decoding vs GPU decoding (gpu-decode). Writes logs to $OUT (default /tmp/gpu_check).
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import os, torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cpus", os.cpu_count())' | tee -a "$out/gpu.txt"
status=0
python3 -m pytest -q -s -p no:cacheprovider tests/integration/test_gpu.py 2>&1 | tee "$out/test_gpu.txt" \
  || status=1  # the benches below still run
# gpu-decode false: the CPU workers decode (the 0.61 baseline); true: the GPU decodes (auto).
for decode in false true; do
  python3 bench/train_finetune.py --image-size 224 --batch-size 128 --repeat 32 --epochs 4 \
    --steps 20 --gpu-decode "$decode" 2>&1 | tail -n 9 | tee "$out/finetune_decode_$decode.txt"
done
exit "$status"
