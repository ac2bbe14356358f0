"""Generation speed: KV-cached vs uncached decoding, RedLLM vs DecLLM, same prompts.

Greedy decoding of ``--new-tokens`` tokens for a batch of prompts of ``--prompt-len`` tokens
(EOS disabled so every row runs to the end). Both paths produce identical tokens (checked here
too); the table shows generated tokens/s and the cache speed-up.

    python benchmarks/generation.py --device cuda --preset 1b --batch 8 --prompt-len 512 --new-tokens 128
    python benchmarks/generation.py            # CPU, tiny preset
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.generate import SamplingOptions, generate
from lightning_redllm.models import build_model


def run(model, prompts, opts, use_cache, device) -> tuple[float, list[list[int]]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, prompts, bos_id=2, eos_id=None, options=opts, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default=None, help="default: 1b on GPU, tiny on CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/generation.json")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("1b" if gpu else "tiny")
    prompt_len = args.prompt_len or (512 if gpu else 64)
    new_tokens = args.new_tokens or (128 if gpu else 32)
    dtype = torch.bfloat16 if gpu else torch.float32
    rows = []
    for family in ("decllm", "redllm"):
        cfg = ModelConfig.from_name(f"{family}-{preset}")
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(cfg)
        model.init_weights()
        model.to(dtype)
        g = torch.Generator().manual_seed(1)
        # ragged prompts: lengths between half and full prompt_len
        lens = torch.randint(prompt_len // 2, prompt_len + 1, (args.batch,), generator=g).tolist()
        prompts = [torch.randint(4, min(cfg.vocab_size, 4000), (n,), generator=g).tolist() for n in lens]
        opts = SamplingOptions(max_new_tokens=new_tokens)
        run(model, prompts[:2], SamplingOptions(max_new_tokens=4), True, device)  # warm-up
        t_cache, out_cache = run(model, prompts, opts, True, device)
        t_full, out_full = run(model, prompts, opts, False, device)
        same = out_cache == out_full
        agree = sum(a == b for ra, rb in zip(out_cache, out_full) for a, b in zip(ra, rb)) / (args.batch * new_tokens)
        rows.append({"family": family, "preset": preset, "dtype": str(dtype).split(".")[-1], "batch": args.batch,
                     "prompt_len_max": prompt_len, "new_tokens": new_tokens,
                     "cached_tok_per_s": round(args.batch * new_tokens / t_cache, 1),
                     "uncached_tok_per_s": round(args.batch * new_tokens / t_full, 1),
                     "speedup": round(t_full / t_cache, 2), "identical": same, "token_agreement": round(agree, 4)})
        print(rows[-1], flush=True)
        del model
    cols = list(rows[0])
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device_name": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
