#!/usr/bin/env bash
# One-shot GPU session script (run through the device tool, from the repo root):
#   installs the carried wheels (.whl/: webdataset, jsonargparse, omegaconf, torchdata, ...),
#   runs the GPU tests + the core CPU tests on the device, then the benchmarks; writes tables/JSON to $OUT.
# Prepare the wheels here first (see README "Benchmarks"), then:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; date -u; } | tee "$OUT/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_models.py tests/test_loss_generate_flops.py 2>&1 | tail -25 | tee "$OUT/pytest_gpu.txt"
timeout 200 python3 benchmarks/train_throughput.py --device cuda --presets 150m,1b --batch 8 --steps 8 --warmup 3 \
  --out "$OUT/train_throughput.json" 2>&1 | tail -20 | tee "$OUT/train_throughput.txt"
timeout 90 python3 benchmarks/generation.py --device cuda --preset 1b --batch 8 --prompt-len 512 --new-tokens 64 \
  --out "$OUT/generation.json" 2>&1 | tail -6 | tee "$OUT/generation.txt"
