#!/usr/bin/env bash
# DeepSpeed ZeRO-3 on one GPU (run through the device tool, from the repo root, no internet there):
#   1B RedLLM and DecLLM under the real DeepSpeedStrategy (recipes/strategy/zero3.yaml), a few steps,
#   sharded checkpoint, resume, export; peak GPU memory next to `plan`'s prediction -> $OUT.
# Prepare the wheels here first (pure Python; DeepSpeed compiles nothing for this config):
#   pip wheel --no-deps -w .whl deepspeed hjson ninja py-cpuinfo msgpack einops psutil \
#       webdataset jsonargparse omegaconf torchdata ... (see README "Benchmarks")
#   run(command="bash benchmarks/gpu_scale.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"; date -u; } | tee "$OUT/device_scale.txt"
timeout 420 python3 benchmarks/gpu_scale.py --size 1b --micro-batch 4 --seq-len 2048 --steps 4 --resume-steps 2 \
  --root /tmp/gpu_scale --out "$OUT/gpu_scale.json" 2>&1 | tail -12 | tee "$OUT/gpu_scale.txt"
