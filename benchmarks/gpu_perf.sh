#!/usr/bin/env bash
# Performance on one GPU (issue 11), run through the device tool from the repo root, no internet there:
#   1. correctness of the fast paths in bf16 on the device: tests/test_gpu.py's no-sync training step
#      (set_sync_debug_mode("error")), compiled vs eager training (bf16 tolerance) and CUDA-graph decoding
#      == eager decoding;
#   2. host syncs of one training step at the 1B point, counted (set_sync_debug_mode("warn")) -> sync_1b.json;
#   3. benchmarks/peers.py at the study's 1B dims: ours (eager and compiled) vs HF Llama, HF T5Gemma and
#      litgpt -- training tokens/s, TFLOP/s, MFU vs the measured matmul peak, peak memory; decoding new
#      tokens/s and the fraction of the bandwidth bound -> peers_1b_train.json, peers_1b_decode.json.
# Sized for ~6 minutes on an H100/H200 (most of it is compilation).
# Prepare the wheels here first (pure Python; the image has torch, transformers, lightning):
#   pip wheel --no-deps -w .whl litgpt webdataset braceexpand jsonargparse docstring-parser typeshed-client \
#       omegaconf antlr4-python3-runtime torchdata ...   (the same .whl as gpu_check.sh, plus litgpt)
#   run(command="bash benchmarks/gpu_perf.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import litgpt" 2>/dev/null && echo "litgpt importable" || echo "litgpt not importable"
  date -u; } | tee "$OUT/device_perf.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  -k "does_not_sync or compiled_training_close or cuda_graph_decode or cached_equals_uncached" 2>&1 \
  | tail -15 | tee "$OUT/pytest_perf.txt"

timeout 90 python3 - "$OUT/sync_1b.json" <<'PY' 2>&1 | tail -5
import json, sys, warnings
import torch
from lightning_redllm.modules import DecLLMModule, RedLLMModule
res = {}
for cls in (DecLLMModule, RedLLMModule):
    m = cls(preset=f"{cls.family}-1b")
    m.configure_model()
    m.to("cuda")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(4, 32768, (4, 2048))
    batch = m.on_before_batch_transfer({"tokens": tokens}, 0)
    batch = {k: ({kk: vv.cuda() for kk, vv in v.items()} if isinstance(v, dict) else v.cuda()) for k, v in batch.items()}
    inputs, checked = m.model_inputs(batch)
    for step in range(2):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            with m.model.inputs_checked(checked), torch.autocast("cuda", dtype=torch.bfloat16):
                loss = m.forward_batch(inputs).loss
            loss.backward()
            finite = torch.stack([torch.isfinite(p.grad).all() for p in m.parameters()]).all() & torch.isfinite(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(x.message).splitlines()[0][:160] for x in w if "synchroniz" in str(x.message)]
        res[f"{cls.family} step {step}"] = {"syncs": len(syncs), "what": syncs[:5], "finite": bool(finite)}
    del m, opt
    torch.cuda.empty_cache()
print(json.dumps(res, indent=1))
json.dump(res, open(sys.argv[1], "w"), indent=1)
PY

timeout 200 python3 benchmarks/peers.py --preset 1b --device cuda --compile --only train --steps 3 --warmup 2 \
  --out "$OUT/peers_1b_train.json" 2>&1 | grep -v "^  train" | tail -14 | tee "$OUT/peers_1b_train.txt"
timeout 170 python3 benchmarks/peers.py --preset 1b --device cuda --compile --only decode --decode-repeat 1 \
  --out "$OUT/peers_1b_decode.json" 2>&1 | grep -v "^  decode" | tail -12 | tee "$OUT/peers_1b_decode.txt"
